"""Layer responses: the statistic of the paper's Figure 7.

He et al. (2015, Section 4.2) measure "the responses of each 3x3 layer, after
BN and before other nonlinearity (ReLU/addition)" on test images: the standard
deviations of residual functions are smaller than those of the plain network's
layers, evidence that residual functions stay closer to zero.

`response_std` computes it for a post-activation network of the registry: the
output of every batch norm that follows a 3x3 convolution (the stem's, and
``bn1``/``bn2`` of basic blocks), with the running statistics (``train=False``).
Each layer's figure is the standard deviation of each channel over images and
positions, averaged over the channels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import ConfigError
from resnet_jax.models.blocks import BatchNorm


def _layer_order(path: str) -> tuple[bool, list[Any]]:
    """The stem first, then 'stage1/block9/bn2' before 'stage1/block10/bn1' (numbers compare as numbers)."""
    return not path.startswith("stem"), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _conv_kernel_of(params: dict, path: tuple[str, ...]) -> Any:
    """The kernel of the convolution a batch norm at `path` normalises (``bn2`` -> ``conv2``)."""
    node = params
    for key in path[:-1]:
        node = node[key]
    conv = node.get(path[-1].replace("bn", "conv"), {})
    return conv.get("kernel")


def response_std(model: Any, variables: dict, batches: Iterable[jax.Array]) -> dict[str, float]:
    """Standard deviation of each 3x3 layer's response over `batches` of
    normalised NHWC images, as ``{layer path: std}`` in the network's order.

    Raises:
      ValueError: for a pre-activation network, whose batch norms come before
        their convolutions (the paper's statistic is for post-activation ones).
    """
    params = variables["params"]
    if "final_bn" in params:
        raise ConfigError("layer responses are defined for post-activation networks (plain and ResNet), not pre-act")

    def is_3x3_bn(path: tuple[str, ...]) -> bool:
        kernel = _conv_kernel_of(params, path)
        return kernel is not None and tuple(kernel.shape[:2]) == (3, 3)

    @jax.jit
    def sums(x: jax.Array) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
        _, state = model.apply(
            variables, x, train=False, capture_intermediates=lambda m, _: isinstance(m, BatchNorm),
            mutable=["intermediates"],
        )  # fmt: skip
        out = {}
        for key_path, y in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
            path = tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey) and k.key != "__call__")
            if is_3x3_bn(path):
                y = y.astype(jnp.float32)
                n = jnp.asarray(y.shape[0] * y.shape[1] * y.shape[2], jnp.float32)  # images x positions
                out["/".join(path)] = (jnp.sum(y, axis=(0, 1, 2)), jnp.sum(jnp.square(y), axis=(0, 1, 2)), n)
        return out

    totals: dict[str, np.ndarray] = {}  # per layer: [sum, sum of squares, count] per channel
    for x in batches:
        for name, (s1, s2, n) in jax.device_get(sums(x)).items():
            batch = np.stack([s1, s2, np.full_like(s1, n)]).astype(np.float64)
            totals[name] = totals[name] + batch if name in totals else batch
    if not totals:
        raise ValueError("no images to measure the layer responses on")
    stds = {}
    for name in sorted(totals, key=_layer_order):
        s1, s2, n = totals[name]
        mean = s1 / n
        stds[name] = float(np.mean(np.sqrt(np.maximum(s2 / n - mean**2, 0.0))))
    return stds
