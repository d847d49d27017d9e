"""Residual blocks, batch norm and shortcuts: the pieces every ResNet is made of.

Blocks receive their convolution and normalisation constructors through
`functools.partial` (as in the Flax ImageNet example), so that each block reads
like its figure in the paper:

* `BasicBlock`: two 3x3 convolutions (He et al. 2015, Fig. 2 left).
* `Bottleneck`: 1x1 reduce, 3x3 (optionally grouped, ResNeXt), 1x1 expand by 4
  (Fig. 5 right). `stride_on_3x3=True` is torchvision's "v1.5"; False is the
  paper's v1 (stride on the first 1x1).
* `PreActBasicBlock` / `PreActBottleneck`: BN-ReLU before each convolution
  ("Identity Mappings in Deep Residual Networks", 2016).

Shortcut options (the paper's Section 3.3 / 4.2):

* ``"A"``: parameter-free identity; where the shape changes, stride-2
  subsampling and zero-padded extra channels.
* ``"B"``: identity, or a 1x1 projection (+ BN) where the shape changes.
* ``"C"``: a 1x1 projection (+ BN) in every block.
* ``None``: no shortcut at all (the paper's "plain" networks).

``avg_down=True`` is ResNet-D's projection ("Bag of Tricks", He et al. 2019):
where the resolution halves, a 2x2 average pool of stride 2 (PyTorch's
``ceil_mode=True, count_include_pad=False``), then a stride-1 1x1 convolution,
so that the projection sees every input pixel instead of one in four.

In pre-activation blocks a projection is a bare 1x1 convolution applied to the
pre-activated input, as in the authors' code and in Wide ResNets.

Stochastic depth ("Deep Networks with Stochastic Depth", Huang et al. 2016):
a block's ``drop_path_rate`` > 0 multiplies its residual branch, before the
shortcut is added, by a per-example Bernoulli(1 - rate) mask divided by
1 - rate (`drop_path`, timm's ``drop_path(..., scale_by_keep=True)``). It is
active only when ``deterministic=False`` (training) and draws from the Flax rng
stream ``"dropout"``; otherwise the block is unchanged. A block without a
shortcut (plain network) has no branch to drop and refuses a rate > 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import ConfigError
from resnet_jax.models.conv import conv_general_dilated

ModuleDef = Any
SHORTCUTS = ("A", "B", "C", None)

# He et al. initialisation: normal with std sqrt(2 / fan_out), as torchvision's
# kaiming_normal_(mode="fan_out", nonlinearity="relu") (not truncated).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    groups: int = 1,
    dtype: Any = jnp.float32,
    kernel_init: Callable = conv_init,
    name: str | None = None,
) -> nn.Conv:
    """A bias-free convolution with torchvision's symmetric padding ``kernel // 2``.

    ``padding="SAME"`` would pad stride-2 convolutions asymmetrically (more on the
    bottom/right), which shifts features by one pixel relative to torchvision.
    On CPU its filter gradient is summed over batch chunks (`models/conv.py`).
    """
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


class BatchNorm(nn.Module):
    """Batch normalisation with torchvision's numerics.

    Statistics are reduced in float32 whatever the compute dtype, parameters and
    running averages stay float32, and the running variance is updated with the
    unbiased batch variance as in ``torch.nn.BatchNorm2d``. ``momentum`` is in
    Flax's convention (``new = momentum * old + (1 - momentum) * batch``), so 0.9
    here is PyTorch's 0.1. Under `jax.jit` with the batch sharded over a device
    mesh, the means are over the global batch (synchronised batch norm).

    ``one_pass=True`` reduces x and x^2 together (var = E[x^2] - E[x]^2): one
    read of the activations instead of two (faster where batch norm's memory
    traffic counts: docs/gpu.md), but it loses float32 precision where
    |mean| >> std. The default two-pass form matches torchvision to 1e-4.

    ``group_size=N`` (0 < N < batch, dividing it) normalises each consecutive
    group of N examples with its own statistics ("ghost" batch norm), as
    PyTorch's per-GPU batch norm does on each process's N examples; the running
    averages take the mean of the groups' statistics.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    one_pass: bool = False
    group_size: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            grouped = 0 < self.group_size < x.shape[0]
            if grouped and x.shape[0] % self.group_size:
                raise ConfigError(f"bn_group_size={self.group_size} must divide the batch of {x.shape[0]}")
            groups = x.shape[0] // self.group_size if grouped else 1
            shape = x.shape
            x = x.reshape(groups, shape[0] // groups, *shape[1:])  # [groups, N, ..., features]
            axes = tuple(range(1, x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes, keepdims=True)
            if self.one_pass:
                var = jnp.maximum(jnp.mean(jnp.square(xf), axes, keepdims=True) - jnp.square(mean), 0.0)
            else:  # two passes: E[x^2] - E[x]^2 cancels catastrophically in float32 where |mean| >> std
                var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
            if not self.is_initializing():
                n = x.size // (features * groups)
                m = self.momentum
                group_mean = jnp.mean(mean, axis=tuple(range(x.ndim - 1)))
                group_var = jnp.mean(var, axis=tuple(range(x.ndim - 1)))
                ra_mean.value = m * ra_mean.value + (1 - m) * group_mean
                ra_var.value = m * ra_var.value + (1 - m) * group_var * (n / max(n - 1, 1))
            mul = scale * jax.lax.rsqrt(var + self.epsilon)
            shift = bias - mean * mul
            return (x * mul.astype(self.dtype) + shift.astype(self.dtype)).reshape(shape)
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        shift = bias - mean * mul
        return x * mul.astype(self.dtype) + shift.astype(self.dtype)


def avg_pool_ceil(x: jax.Array, size: int) -> jax.Array:
    """``torch.nn.AvgPool2d(size, size, ceil_mode=True, count_include_pad=False)`` on NHWC.

    Where the height or width is not a multiple of `size`, the last window
    hangs over the edge and averages only the pixels inside it (7 -> 4 for
    size 2, the last row or column alone).
    """
    pad = [(0, -d % size) for d in x.shape[1:3]]
    y = nn.avg_pool(x, (size, size), strides=(size, size), padding=pad, count_include_pad=False)
    return y.astype(x.dtype)  # the divisor is float32


def drop_path(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Stochastic depth per example: zero whole examples of `x` with probability `rate`, scale the rest by 1/(1-rate).

    timm's ``drop_path(x, rate, training=True, scale_by_keep=True)``; the identity when `rate` is 0 (`key` unused).
    """
    if rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return x * (mask * (1.0 / keep) if keep > 0.0 else mask)


def _zero_pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Option A: subsample spatially, zero-pad the extra channels (no parameters)."""
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


def _needs_projection(shortcut: str | None, x: jax.Array, features: int, strides: int) -> bool:
    return shortcut == "C" or (shortcut == "B" and (strides != 1 or x.shape[-1] != features))


class _Block(nn.Module):
    """Fields shared by every block; subclasses define `__call__`."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str | None = "B"
    act: Callable = nn.relu
    zero_init_residual: bool = False
    avg_down: bool = False
    drop_path_rate: float = 0.0
    deterministic: bool | None = None  # no stochastic depth when True; must be set when drop_path_rate > 0

    def project(self, x: jax.Array, features: int) -> jax.Array:
        """The 1x1 projection of a shortcut: strided, or ResNet-D's average pool then stride 1."""
        if self.avg_down and self.strides > 1:
            return self.conv(features, 1, name="shortcut_conv")(avg_pool_ceil(x, self.strides))
        return self.conv(features, 1, self.strides, name="shortcut_conv")(x)

    def residual(self, x: jax.Array, features: int) -> jax.Array:
        """Shortcut path of a post-activation block (conv + BN when projecting)."""
        if self.shortcut == "A":
            return _zero_pad_shortcut(x, features, self.strides)
        if _needs_projection(self.shortcut, x, features, self.strides):
            return self.norm(name="shortcut_bn")(self.project(x, features))
        return x

    def preact_residual(self, x: jax.Array, y: jax.Array, features: int) -> jax.Array:
        """Shortcut of a pre-activation block: a projection sees the activated `y`."""
        if self.shortcut == "A":
            return _zero_pad_shortcut(x, features, self.strides)
        if _needs_projection(self.shortcut, x, features, self.strides):
            return self.project(y, features)
        return x

    def last_norm(self, name: str) -> ModuleDef:
        if self.zero_init_residual:
            return self.norm(name=name, scale_init=nn.initializers.zeros)
        return self.norm(name=name)

    def last_conv_init(self) -> Callable:
        return nn.initializers.zeros if self.zero_init_residual else conv_init

    def add(self, branch: jax.Array, shortcut: Callable[[], jax.Array]) -> jax.Array:
        """``branch + shortcut()``, stochastic depth applied to the branch (the branch alone in a plain block)."""
        if self.shortcut is None:
            if self.drop_path_rate > 0.0:
                raise ConfigError("drop_path_rate > 0 needs a shortcut: a plain block (shortcut=None) has no residual")
            return branch
        return self.drop_branch(branch) + shortcut()

    def drop_branch(self, branch: jax.Array) -> jax.Array:
        """`drop_path` of the residual branch when training with a rate > 0, with a key of the "dropout" stream."""
        if self.drop_path_rate == 0.0:
            return branch
        if self.deterministic is None:
            raise ValueError("a block with drop_path_rate > 0 needs deterministic=True (eval) or False (training)")
        if self.deterministic:
            return branch
        return drop_path(branch, self.drop_path_rate, self.make_rng("dropout"))


class BasicBlock(_Block):
    """3x3 -> 3x3, output width `filters` (ResNet-18/34, CIFAR ResNets)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.act(self.norm(name="bn1")(self.conv(self.filters, 3, self.strides, name="conv1")(x)))
        y = self.last_norm("bn2")(self.conv(self.filters, 3, name="conv2")(y))
        return self.act(self.add(y, lambda: self.residual(x, self.filters)))


class _BottleneckBase(_Block):
    """Fields of both bottlenecks: ResNeXt cardinality / width, and stride placement."""

    groups: int = 1
    base_width: int = 64
    stride_on_3x3: bool = True

    def layout(self) -> tuple[int, int, int]:
        """(width of the 3x3, stride of the first 1x1, stride of the 3x3)."""
        width = int(self.filters * self.base_width / 64) * self.groups
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        return width, s1, s3


class Bottleneck(_BottleneckBase):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, output width ``4 * filters``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, s1, s3 = self.layout()
        y = self.act(self.norm(name="bn1")(self.conv(width, 1, s1, name="conv1")(x)))
        y = self.act(self.norm(name="bn2")(self.conv(width, 3, s3, groups=self.groups, name="conv2")(y)))
        y = self.last_norm("bn3")(self.conv(self.filters * 4, 1, name="conv3")(y))
        return self.act(self.add(y, lambda: self.residual(x, self.filters * 4)))


class PreActBasicBlock(_Block):
    """BN-ReLU-3x3 -> BN-ReLU-3x3, identity added without a final ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.act(self.norm(name="bn1")(x))
        sc = functools.partial(self.preact_residual, x, y, self.filters)
        y = self.conv(self.filters, 3, self.strides, name="conv1")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.filters, 3, name="conv2", kernel_init=self.last_conv_init())(y)
        return self.add(y, sc)


class PreActBottleneck(_BottleneckBase):
    """BN-ReLU-1x1 -> BN-ReLU-3x3 -> BN-ReLU-1x1, output width ``4 * filters``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, s1, s3 = self.layout()
        y = self.act(self.norm(name="bn1")(x))
        sc = functools.partial(self.preact_residual, x, y, self.filters * 4)
        y = self.act(self.norm(name="bn2")(self.conv(width, 1, s1, name="conv1")(y)))
        y = self.act(self.norm(name="bn3")(self.conv(width, 3, s3, groups=self.groups, name="conv2")(y)))
        y = self.conv(self.filters * 4, 1, name="conv3", kernel_init=self.last_conv_init())(y)
        return self.add(y, sc)
