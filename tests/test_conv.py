"""The batch-chunked filter gradient (`resnet_jax.models.conv`) against `lax.conv_general_dilated`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax.models import conv as conv_lib

DN = ("NHWC", "HWIO", "NHWC")


def _loss(conv_fn, strides, padding, groups):
    def loss(x, w):
        y = conv_fn(x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups)
        return jnp.sum(jnp.sin(y))

    return loss


@pytest.mark.parametrize(
    "batch, strides, padding, groups",
    [
        (20, (1, 1), [(1, 1), (1, 1)], 1),  # chunks of 8, 8 and 4; padding as the list flax passes
        (40, (2, 2), "SAME", 1),
        (24, (1, 1), ((1, 1), (1, 1)), 2),  # grouped convolution
    ],
)
def test_values_and_derivatives_equal_lax(batch, strides, padding, groups):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, 10, 10, 4))
    w = jax.random.normal(kw, (3, 3, 4 // groups, 6))
    ours = _loss(conv_lib.conv_general_dilated, strides, padding, groups)
    ref = _loss(lax.conv_general_dilated, strides, padding, groups)
    np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=1e-5)
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    tangents = (jnp.ones_like(x), jnp.cos(w))  # forward mode works too (a custom_vjp would refuse it)
    np.testing.assert_allclose(
        jax.jvp(ours, (x, w), tangents)[1], jax.jvp(ref, (x, w), tangents)[1], rtol=2e-4, atol=2e-3
    )
    hvp = lambda f: jax.jvp(jax.grad(f, 1), (x, w), tangents)[1]  # noqa: E731  (forward-over-reverse)
    np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=2e-4, atol=2e-3)


def _convolutions(batch: int, platform: str, kernel: int = 3, channels: int = 4) -> int:
    """Convolutions in the lowered filter gradient for `platform`, at this batch size."""
    x = jnp.ones((batch, 8, 8, channels))
    w = jnp.ones((kernel, kernel, channels, channels))

    def filter_grad(w, x):
        return jax.grad(lambda w: jnp.sum(conv_lib.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)))(w)

    lowered = jax.jit(filter_grad).trace(w, x).lower(lowering_platforms=(platform,))
    return lowered.as_text().count("stablehlo.convolution")


def test_filter_gradient_is_chunked_on_cpu_only():
    assert _convolutions(8, "cpu") == 1  # a single chunk: nothing to split
    assert _convolutions(32, "cpu") == 32 // conv_lib.CPU_FILTER_GRAD_CHUNK
    assert _convolutions(1024, "cpu") == conv_lib.MAX_CHUNKS  # chunks grow with the batch
    assert _convolutions(32, "cuda") == 1
    assert _convolutions(32, "tpu") == 1
    assert _convolutions(32, "cpu", kernel=1) == 1  # a 1x1 filter gradient is a matmul: left whole
    assert _convolutions(32, "cpu", channels=512) == 1  # where chunks were measured slower
