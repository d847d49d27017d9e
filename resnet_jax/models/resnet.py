"""The ResNet network and the ImageNet family (4 stages, 7x7 stem + max-pool).

One `ResNet` module builds every network of the package: a stem, then one stage
per entry of `stage_sizes` (the first block of each stage after the first
halves the resolution), global average pooling and a dense head. The ImageNet
networks below and the CIFAR networks in `cifar.py` differ only in their
arguments.

The ``resnet<depth>d`` networks are ResNet-D of "Bag of Tricks for Image
Classification with Convolutional Neural Networks" (He et al. 2019) as timm
builds them: ResNet-C's deep stem (three 3x3 convolutions of 32, 32 and 64
filters, the first of stride 2, each followed by BN and ReLU) and ResNet-D's
average-pooling projection shortcuts (``avg_down``, see `blocks`).
``preact_resnet<depth>d`` is the same on pre-activation blocks (timm's
``resnetv2_<depth>d``).

Variable names follow the architecture: ``stem_conv`` (``stem_conv1..3`` and
``stem_bn1..2`` in a deep stem), ``stem_bn``, ``stage1/block0/conv1``,
``stage2/block0/shortcut_conv``, ``final_bn`` (pre-act), ``head``. Stages are
numbered from 1, blocks from 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import ConfigError
from resnet_jax.models.blocks import (
    SHORTCUTS,
    BasicBlock,
    BatchNorm,
    Bottleneck,
    ModuleDef,
    PreActBasicBlock,
    PreActBottleneck,
    conv,
)
from resnet_jax.models.registry import register

STEMS = ("imagenet", "deep", "cifar")

# torch.nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
head_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def drop_path_rates(stage_sizes: Sequence[int], rate: float) -> tuple[tuple[float, ...], ...]:
    """Stochastic-depth rate of every block, per stage: ``rate * k / (num_blocks - 1)`` for block k of the network.

    Linear in depth, from 0 (first block) to `rate` (last block), over all blocks in order, as timm's
    ``resnet.make_blocks``: ``block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)``
    (a one-block network, where timm divides by zero, gets 0).
    """
    num_blocks = sum(stage_sizes)
    rates = [rate * k / max(num_blocks - 1, 1) for k in range(num_blocks)]
    starts = [sum(stage_sizes[:i]) for i in range(len(stage_sizes))]
    return tuple(tuple(rates[start : start + size]) for start, size in zip(starts, stage_sizes))


class Stage(nn.Module):
    """`size` blocks of the same width; the first one applies `strides`.

    `drop_path_rates`: each block's stochastic-depth rate (default: none).
    """

    block: ModuleDef
    size: int
    filters: int
    strides: int
    drop_path_rates: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rates = self.drop_path_rates or (0.0,) * self.size
        for j in range(self.size):
            strides = self.strides if j == 0 else 1
            x = self.block(filters=self.filters, strides=strides, drop_path_rate=rates[j], name=f"block{j}")(x)
        return x


class ResNet(nn.Module):
    """A residual network (He et al. 2015) and its variants.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: block class (`BasicBlock`, `Bottleneck`, `PreAct*`).
      stage_widths: `filters` of each stage (a bottleneck outputs 4x that).
      num_classes: size of the dense head.
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "deep" (ResNet-C: 3x3/2,
        3x3, 3x3 convs of stem_width/2, stem_width/2, stem_width + 3x3/2
        max-pool) or "cifar" (3x3/1 conv).
      stem_width: filters out of the stem (default: the first stage's width).
      shortcut: "A", "B", "C" or None (plain network); see `blocks`.
      avg_down: ResNet-D's projections (2x2 average pool, then a stride-1 1x1 conv).
      groups, base_width: ResNeXt cardinality and width per group.
      stride_on_3x3: torchvision v1.5 (True) or the paper's v1 (False).
      zero_init_residual: zero the last BN scale (last conv in pre-act blocks)
        of every residual branch, so each block starts as the identity.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters and batch-norm
        statistics stay float32, and logits are returned as float32.
      bn_momentum, bn_epsilon: torchvision's numerics by default.
      bn_one_pass: batch-norm variance in one pass (faster, less exact; see `BatchNorm`).
      bn_group_size: > 0: training statistics over each group of this many
        examples of the batch (ghost batch norm; PyTorch's per-GPU batch norm).
      drop_path_rate: stochastic depth (timm's ``drop_path_rate``): in training,
        block k of the network's n blocks drops its residual branch per example
        with probability ``drop_path_rate * k / (n - 1)`` (see `drop_path_rates`
        and `blocks.drop_path`). With a rate > 0, training needs a "dropout" rng:
        ``model.apply(variables, x, train=True, mutable=["batch_stats"],
        rngs={"dropout": key})``. No new variables; a plain network
        (shortcut=None) refuses a rate > 0.
    """

    stage_sizes: Sequence[int]
    block: ModuleDef
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1000
    stem: str = "imagenet"
    stem_width: int | None = None
    shortcut: str | None = "B"
    avg_down: bool = False
    groups: int = 1
    base_width: int = 64
    stride_on_3x3: bool = True
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_one_pass: bool = False
    bn_group_size: int = 0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        """Refuses options that cannot build a network, when the module is made
        (`ConfigError`), not when it is first run."""
        super().__post_init__()
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if not 0.0 <= self.drop_path_rate <= 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1], got {self.drop_path_rate!r}")
        if self.drop_path_rate > 0.0 and self.shortcut is None:
            raise ConfigError(
                f"drop_path_rate={self.drop_path_rate} needs residual blocks: a plain network (shortcut=None) "
                "has no residual branch to drop"
            )

    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Logits (float32) of a batch of normalised NHWC images."""
        return self._forward(x, train, head=True)

    def features(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        """The network as a backbone: ``{"stem", "stage1", ..., "stageN", "pooled"}``.

        ``stem`` is the output of the stem (after its max-pool where there is
        one), ``stage<i>`` the output of each stage (NHWC, in the compute dtype),
        ``pooled`` the globally pooled features the head would read ([N, C]).
        Use it as ``model.apply(variables, x, train=False, method="features")``
        (with ``mutable=["batch_stats"]`` when `train`); the head is not run.
        """
        return self._forward(x, train, head=False)

    @nn.compact
    def _forward(self, x: jax.Array, train: bool, head: bool) -> Any:
        conv_ = functools.partial(conv, dtype=self.dtype)
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            one_pass=self.bn_one_pass,
            group_size=self.bn_group_size,
            dtype=self.dtype,
        )
        preact = self.block in (PreActBasicBlock, PreActBottleneck)
        block = functools.partial(
            self.block,
            conv=conv_,
            norm=norm,
            shortcut=self.shortcut,
            zero_init_residual=self.zero_init_residual,
            avg_down=self.avg_down,
            deterministic=not train,
        )
        if self.block in (Bottleneck, PreActBottleneck):
            block = functools.partial(
                block, groups=self.groups, base_width=self.base_width, stride_on_3x3=self.stride_on_3x3
            )

        x = x.astype(self.dtype)
        stem_width = self.stem_width or self.stage_widths[0]
        if self.stem == "deep":
            for k, strides in ((1, 2), (2, 1)):
                x = nn.relu(norm(name=f"stem_bn{k}")(conv_(stem_width // 2, 3, strides, name=f"stem_conv{k}")(x)))
            x = conv_(stem_width, 3, name="stem_conv3")(x)
        elif self.stem == "imagenet":
            x = conv_(stem_width, 7, 2, name="stem_conv")(x)
        else:
            x = conv_(stem_width, 3, name="stem_conv")(x)
        if not preact:  # a pre-activation network's first block normalises its input
            x = nn.relu(norm(name="stem_bn")(x))
        if self.stem != "cifar":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        features = {"stem": x}

        rates = drop_path_rates(self.stage_sizes, self.drop_path_rate)
        for i, (size, filters) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            x = Stage(block, size, filters, 1 if i == 0 else 2, drop_path_rates=rates[i], name=f"stage{i + 1}")(x)
            features[f"stage{i + 1}"] = x

        if preact:
            x = nn.relu(norm(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        if not head:
            return {**features, "pooled": x}
        x = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=head_init, name="head"
        )(x)
        return x.astype(jnp.float32)


def _imagenet(stage_sizes: Sequence[int], block: ModuleDef, **kwargs: Any) -> functools.partial:
    return functools.partial(ResNet, stage_sizes=tuple(stage_sizes), block=block, **{"stem": "imagenet", **kwargs})


_RESNET_D = {"stem": "deep", "avg_down": True}
_DEPTHS = {
    18: ((2, 2, 2, 2), BasicBlock, PreActBasicBlock),
    26: ((2, 2, 2, 2), Bottleneck, PreActBottleneck),
    34: ((3, 4, 6, 3), BasicBlock, PreActBasicBlock),
    50: ((3, 4, 6, 3), Bottleneck, PreActBottleneck),
    101: ((3, 4, 23, 3), Bottleneck, PreActBottleneck),
    152: ((3, 8, 36, 3), Bottleneck, PreActBottleneck),
    200: ((3, 24, 36, 3), Bottleneck, PreActBottleneck),
}

for _depth, (_sizes, _block, _preact) in _DEPTHS.items():
    register(f"resnet{_depth}", "imagenet")(_imagenet(_sizes, _block))
    register(f"resnet{_depth}d", "imagenet")(_imagenet(_sizes, _block, **_RESNET_D))
    if _depth in (18, 34, 50, 101, 152):  # the paper's depths (timm's resnetv2_<depth>[d])
        register(f"preact_resnet{_depth}", "imagenet")(_imagenet(_sizes, _preact, shortcut="B"))
        register(f"preact_resnet{_depth}d", "imagenet")(_imagenet(_sizes, _preact, **_RESNET_D))
    if _depth in (18, 34):
        register(f"plain{_depth}", "imagenet")(_imagenet(_sizes, _block, shortcut=None))

register("resnext50_32x4d", "imagenet")(_imagenet((3, 4, 6, 3), Bottleneck, groups=32, base_width=4))
register("resnext101_32x8d", "imagenet")(_imagenet((3, 4, 23, 3), Bottleneck, groups=32, base_width=8))
register("resnext101_64x4d", "imagenet")(_imagenet((3, 4, 23, 3), Bottleneck, groups=64, base_width=4))
register("wide_resnet50_2", "imagenet")(_imagenet((3, 4, 6, 3), Bottleneck, base_width=128))
register("wide_resnet101_2", "imagenet")(_imagenet((3, 4, 23, 3), Bottleneck, base_width=128))
