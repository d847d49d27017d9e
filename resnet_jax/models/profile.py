"""Parameter and multiply-accumulate (MAC) counts of any registered model.

Counted by abstract evaluation (`jax.eval_shape`), so even ResNet-1202 costs
no FLOPs. MACs are those of the convolutions and the dense head, the
convention of the ResNet paper and torchvision's model table.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.registry import create, family


def default_resolution(name: str) -> int:
    """224 for the ImageNet family, 32 for the CIFAR family."""
    return 32 if family(name) == "cifar" else 224


def count_params(variables: Any) -> int:
    """Number of scalars in the `params` collection."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))


def count_layers(variables: Any) -> int:
    """Weighted layers as the paper counts them: every convolution and the
    classifier, projection shortcuts left out (ResNet-20: 19 + 1)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
    return sum(p.endswith("['kernel']") and "shortcut" not in p for p in paths)


def profile(name: str, resolution: int | None = None, **overrides: Any) -> dict[str, int]:
    """Returns ``{"params": ..., "macs": ...}`` of model `name` on one image.

    Args:
      name: a registered model name.
      resolution: input height and width (default: `default_resolution`).
      **overrides: passed to `create` (e.g. ``num_classes=10``).
    """
    model = create(name, **overrides)
    resolution = resolution or default_resolution(name)
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    macs = 0

    def count(next_fun, args, kwargs, context):
        nonlocal macs
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables["params"]["kernel"]
            macs += math.prod(out.shape) * math.prod(kernel.shape[:-1])
        return out

    def init_and_count(x: jax.Array) -> tuple[Any, jax.Array]:
        with nn.intercept_methods(count):
            return model.init_with_output(jax.random.key(0), x, train=False)

    _, variables = jax.eval_shape(init_and_count, x)
    return {"params": count_params(variables), "macs": macs}
