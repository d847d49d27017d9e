"""A convolution whose filter gradient is summed over batch chunks on CPU.

XLA:CPU computes a convolution's filter gradient as one convolution with an
image-sized "kernel" and a 3x3 output (run by YNNPACK in jax 0.10), and its
time grows faster than the batch; the same gradient summed over chunks of a
few images is cheaper (docs/cpu.md has the measurements and their commands).
`conv_general_dilated` below is
`lax.conv_general_dilated` with a JVP that applies the filter tangent chunk by
chunk, so reverse mode transposes it into that sum of per-chunk filter
gradients. Forward values, input gradients and forward-mode derivatives are
those of `lax.conv_general_dilated`; only the order of a float sum changes.
Other backends (GPU, TPU) lower the plain convolution: cuDNN and the TPU
compiler do not have this problem.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

# Images per chunk, the best for ResNet-20's layer shapes (docs/cpu.md, bench/conv_grad.py).
# Larger batches take larger chunks, so that a layer's gradient is at most MAX_CHUNKS
# convolutions to compile.
CPU_FILTER_GRAD_CHUNK = 8
MAX_CHUNKS = 16
# 1x1 kernels (their filter gradient is a matmul) and filters of more than 256 x 256
# channels are left whole: chunking did not pay there (docs/cpu.md).
MAX_CHUNKED_FILTER_SIZE = 256 * 256


def _hashable(value: Any) -> Any:
    """Nested lists (flax passes padding as one) -> tuples, for static arguments."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6, 7, 8, 9, 10))
def _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )


@_conv.defjvp
def _conv_jvp(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, precision, preferred_element_type, primals, tangents):
    lhs, rhs = primals
    lhs_dot, rhs_dot = tangents
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )
    specs = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    n = lhs.shape[specs.lhs_spec[0]]
    chunk = max(CPU_FILTER_GRAD_CHUNK, -(-n // MAX_CHUNKS))

    def chunked(lhs, rhs_dot):
        parts = [
            conv(lax.slice_in_dim(lhs, i, min(i + chunk, n), axis=specs.lhs_spec[0]), rhs_dot)
            for i in range(0, n, chunk)
        ]
        return jnp.concatenate(parts, axis=specs.out_spec[0])

    out_features, in_features, *kernel = (rhs.shape[d] for d in specs.rhs_spec)
    worth_it = max(kernel) > 1 and in_features * out_features <= MAX_CHUNKED_FILTER_SIZE
    if batch_group_count == 1 and n > chunk and worth_it:
        rhs_term = lax.platform_dependent(lhs, rhs_dot, cpu=chunked, default=conv)
    else:
        rhs_term = conv(lhs, rhs_dot)
    return conv(lhs, rhs), conv(lhs_dot, rhs) + rhs_term


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated`, with a batch-chunked filter gradient on CPU."""
    return _conv(
        lhs, rhs, _hashable(window_strides), _hashable(padding), _hashable(lhs_dilation),
        _hashable(rhs_dilation), _hashable(dimension_numbers), feature_group_count,
        batch_group_count, precision, preferred_element_type,
    )
