"""Random erasing (Zhong et al. 2017) as a pure JAX function, run inside the
compiled train step.

The semantics are torchvision's `transforms.RandomErasing` applied to each
image of the batch with an independent draw. The 10 tries of
`RandomErasing.get_params` are drawn at once and the first that fits is taken.
Every hyperparameter may be a traced JAX scalar (no Python control flow on them).

Images are [B, H, W, C] (channels last). Integer images (uint8) come back as
float32 so that a fractional erasing value (the dataset's mean pixel, which is 0
after normalisation) is kept exactly; floating images keep their dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

TRIES = 10


def erasing_boxes(
    key: jax.Array,
    batch: int,
    height: int,
    width: int,
    probability: Any = 0.25,
    scale: Any = (0.02, 0.33),
    ratio: Any = (0.3, 3.3),
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The erased rectangle of each image: (apply bool [B], top, left, h, w int32 [B]).

    Per image, with probability `probability`: 10 tries of area ~ U(scale) * H * W
    and aspect ratio log-uniform in `ratio`, ``h = round(sqrt(area * ratio))``,
    ``w = round(sqrt(area / ratio))``; the first try with ``h < H and w < W`` is
    taken, its top ~ randint(0, H - h + 1) and left ~ randint(0, W - w + 1).
    `apply` is False where the image is not erased (the probability, or no try
    fits); its box is then ``(0, 0, 0, 0)``. Rounding is half to even, as Python's.
    """
    k_apply, k_area, k_ratio, k_top, k_left = jax.random.split(key, 5)
    scale = jnp.asarray(scale, jnp.float32)
    log_ratio = jnp.log(jnp.asarray(ratio, jnp.float32))
    area = height * width * jax.random.uniform(k_area, (batch, TRIES), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (batch, TRIES), minval=log_ratio[0], maxval=log_ratio[1]))
    hs = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ws = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (hs < height) & (ws < width)
    first = jnp.argmax(fits, axis=1)[:, None]  # the first try that fits (0 where none does)
    apply = (jax.random.uniform(k_apply, (batch,)) < probability) & fits.any(axis=1)
    h = jnp.where(apply, jnp.take_along_axis(hs, first, axis=1)[:, 0], 0)
    w = jnp.where(apply, jnp.take_along_axis(ws, first, axis=1)[:, 0], 0)
    top = jnp.where(apply, jax.random.randint(k_top, (batch,), 0, height - h + 1), 0)
    left = jnp.where(apply, jax.random.randint(k_left, (batch,), 0, width - w + 1), 0)
    return apply, top, left, h, w


def random_erasing(
    key: jax.Array,
    images: jax.Array,
    probability: Any = 0.25,
    scale: Any = (0.02, 0.33),
    ratio: Any = (0.3, 3.3),
    value: Any = (0, 0, 0),
) -> jax.Array:
    """torchvision's `RandomErasing` per image: [B, H, W, C] -> [B, H, W, C].

    The boxes are `erasing_boxes(key, ...)`'s (same key, same boxes); the pixels
    inside are set to `value` (a scalar or one value per channel). Integer
    images come back as float32, floating images keep their dtype.
    """
    b, height, width, c = images.shape
    _, top, left, h, w = erasing_boxes(key, b, height, width, probability, scale, ratio)
    out = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_y = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_x = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_y[:, :, None, None] & in_x[:, None, :, None]
    fill = jnp.broadcast_to(jnp.asarray(value, out), (c,))
    return jnp.where(mask, fill, images.astype(out))
