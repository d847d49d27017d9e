"""Augmentations: CIFAR pad-and-crop + flip (TensorFlow, JAX and NumPy versions
with the same semantics) and Inception-style crops for ImageNet-scale images
(TensorFlow, and Pillow for the Grain pipeline).

The random-resized crop's window is drawn by one sampler, `crop_window`, on
both pipelines: torchvision's `RandomResizedCrop.get_params` (timm's is the
same), written once for NumPy and TensorFlow arrays. ``data.crop_sampler="tf"``
draws TensorFlow's `sample_distorted_bounding_box` instead (tf.data only), the
crop of TF sources such as the Flax ImageNet example and MLPerf's reference.

TensorFlow is imported inside the TF functions only, so this module imports
where TensorFlow is absent. Every random choice is stateless, keyed by a seed
(or drawn from a generator seeded per example), so the same seed gives the same
augmentation whatever the parallelism.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from resnet_jax.errors import ConfigError

# ---------------------------------------------------------------- JAX (on device)


def crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pads each image by `pad`, takes a random crop of the original size and
    flips it horizontally with probability 1/2 (He et al. 2015, Section 4.2).

    Args:
      key: a PRNG key.
      images: [B, H, W, C] images of any dtype.
      pad: padding on every side.
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ky, kx, kf = jax.random.split(key, 3)
    dy = jax.random.randint(ky, (b,), 0, 2 * pad + 1)
    dx = jax.random.randint(kx, (b,), 0, 2 * pad + 1)
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(padded, dy, dx)
    flip = jax.random.bernoulli(kf, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def normalize(images: jax.Array, mean: Any, std: Any, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 [0, 255] images -> ``(x / 255 - mean) / std`` per channel, in `dtype`."""
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    std = jnp.asarray(std, jnp.float32) * 255.0
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


# ---------------------------------------------------------------- TensorFlow (tf.data)


def tf_crop_flip(image: Any, seed: Any, pad: int = 4) -> Any:
    """`crop_flip` for one image inside tf.data; `seed` is a stateless [2] seed."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    h, w, c = image.shape
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [h, w, c], seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


CROP_SAMPLERS = ("torchvision", "tf")  # data.crop_sampler
CROP_TRIES = 10  # torchvision's and timm's RandomResizedCrop


def crop_sampler(name: str, pipeline: str = "tfds") -> str:
    """``data.crop_sampler`` checked: "torchvision" on any pipeline, "tf" on tf.data only."""
    if name not in CROP_SAMPLERS:
        raise ConfigError(f"data.crop_sampler={name!r}: use {' or '.join(repr(n) for n in CROP_SAMPLERS)}")
    if name == "tf" and pipeline != "tfds":
        raise ConfigError(
            "data.crop_sampler='tf' is TensorFlow's sample_distorted_bounding_box, drawn by the tfds pipeline only; "
            f"data.pipeline={pipeline!r} draws torchvision's RandomResizedCrop (data.crop_sampler='torchvision')"
        )
    return name


def crop_window(
    uniforms: Any,
    height: Any,
    width: Any,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    xp: Any = np,
) -> tuple[Any, Any, Any, Any]:
    """torchvision's `RandomResizedCrop.get_params` (and timm's) from ``2 * CROP_TRIES + 2``
    uniform draws in [0, 1): (top, left, height, width) of the window, as floats.

    Try k takes an area fraction uniform in `area_range` (``uniforms[k]``) and an
    aspect (width / height) log-uniform in `aspect_range` (``uniforms[CROP_TRIES + k]``);
    the first try whose rounded window fits the image is placed uniformly
    (the last two draws). If none fits, the window is the central crop of the whole
    image clamped to `aspect_range`. `xp` is ``numpy`` or ``tensorflow``: the
    functions used (exp, sqrt, round, floor, where) exist in both, rounding half to
    even as Python's `round` does; `height` and `width` are floats (float64 tensors).
    """
    lo, hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    area = height * width * (area_range[0] + (area_range[1] - area_range[0]) * uniforms[:CROP_TRIES])
    aspect = xp.exp(lo + (hi - lo) * uniforms[CROP_TRIES : 2 * CROP_TRIES])
    w, h = xp.round(xp.sqrt(area * aspect)), xp.round(xp.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    ratio, low, high = width / height, min(aspect_range), max(aspect_range)  # the fallback: clamped to the range
    crop_h = xp.where(ratio < low, xp.round(width / low), height)
    crop_w = xp.where(ratio > high, xp.round(height * high), width)
    found = False
    for k in reversed(range(CROP_TRIES)):  # the first try that fits wins
        crop_h, crop_w = xp.where(fits[k], h[k], crop_h), xp.where(fits[k], w[k], crop_w)
        found = found | fits[k]
    top = xp.where(found, xp.floor(uniforms[2 * CROP_TRIES] * (height - crop_h + 1)), xp.floor((height - crop_h) / 2))
    left = xp.where(
        found, xp.floor(uniforms[2 * CROP_TRIES + 1] * (width - crop_w + 1)), xp.floor((width - crop_w) / 2)
    )
    return top, left, crop_h, crop_w


def tf_crop_window(
    shape: Any,
    seed: Any,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    sampler: str = "torchvision",
) -> Any:
    """The training crop's window, int32 [top, left, height, width], of an image of
    `shape` ([height, width, ...]) from a stateless [2] `seed`: `crop_window`'s
    ("torchvision") or `sample_distorted_bounding_box`'s ("tf", the Flax ImageNet
    example's arguments: ``min_object_covered=0.1``, 10 attempts, the whole image
    when none succeeds)."""
    import tensorflow as tf

    if crop_sampler(sampler) == "torchvision":
        uniforms = tf.random.stateless_uniform([2 * CROP_TRIES + 2], seed, dtype=tf.float64)
        height, width = tf.unstack(tf.cast(shape[:2], tf.float64))
        return tf.cast(tf.stack(crop_window(uniforms, height, width, area_range, aspect_range, tf)), tf.int32)
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=CROP_TRIES,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], box_size[0], box_size[1]])


def tf_inception_crop(
    encoded: Any,
    seed: Any,
    size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
    sampler: str = "torchvision",
) -> Any:
    """Random-resized crop (area 8-100%, aspect 3/4-4/3) + flip, resized to `size`
    (`interpolation`: "bicubic" or "bilinear", antialiased). Only the crop window of
    a JPEG is decoded.

    `sampler` "torchvision": the window of `crop_window`. "tf": TensorFlow's
    `sample_distorted_bounding_box` with the Flax ImageNet example's arguments
    (``min_object_covered=0.1``, 10 attempts; the area is then not uniform: its
    mean is 0.39 of a 500 x 375 image against torchvision's 0.43), falling back to
    the evaluation crop when it returns the whole image, as that example does.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = tf.image.extract_jpeg_shape(encoded) if _is_jpeg(encoded) else tf.shape(_decode(encoded))
    window = tf_crop_window(shape, seeds[0], area_range, aspect_range, sampler)
    if sampler == "torchvision":
        image = tf.cast(_decode_window(encoded, window), tf.float32)
    else:
        image = tf.cond(
            tf.reduce_all(tf.equal(window[2:], shape[:2])),  # the whole image: the example's evaluation crop
            lambda: tf.cast(_center_crop(_decode(encoded), size, 224 / 256, interpolation), tf.float32),
            lambda: tf.cast(_decode_window(encoded, window), tf.float32),
        )
    image = tf.image.resize(image, [size, size], method=resize_method(interpolation), antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def tf_center_crop(encoded: Any, size: int, crop_fraction: float = 224 / 256, interpolation: str = "bicubic") -> Any:
    """Evaluation transform: resize the short side to ``size / crop_fraction``
    (256 for 224) and take the central ``size`` x ``size`` crop."""
    import tensorflow as tf

    image = _center_crop(_decode(encoded), size, crop_fraction, interpolation)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def tf_decode(encoded: Any, size: tuple[int, int]) -> Any:
    """Decodes any image to RGB uint8 of shape ``size + (3,)``, resizing if needed."""
    import tensorflow as tf

    image = _decode(encoded)
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    image = tf.cond(
        same,
        lambda: image,
        lambda: tf.cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8),
    )
    return tf.ensure_shape(image, (*size, 3))


def _is_jpeg(encoded: Any) -> Any:
    import tensorflow as tf

    return tf.strings.substr(encoded, 0, 3) == b"\xff\xd8\xff"


def _decode(encoded: Any) -> Any:
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, (None, None, 3))


def _decode_window(encoded: Any, window: Any) -> Any:
    import tensorflow as tf

    return tf.cond(
        _is_jpeg(encoded),
        lambda: tf.image.decode_and_crop_jpeg(encoded, window, channels=3),
        lambda: tf.image.crop_to_bounding_box(_decode(encoded), window[0], window[1], window[2], window[3]),
    )


INTERPOLATIONS = ("bicubic", "bilinear")


def resize_method(interpolation: str) -> str:
    """`interpolation` checked: a `tf.image.resize` method (and a Pillow filter's name)."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation={interpolation!r}: use {' or '.join(INTERPOLATIONS)}")
    return interpolation


def _resize_short_side(image: Any, short: int, interpolation: str = "bicubic") -> Any:
    import tensorflow as tf

    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, new, method=resize_method(interpolation), antialias=True)


def eval_short_side(size: int, crop_fraction: float) -> int:
    """The short side the evaluation crop resizes to: ``size / crop_fraction`` rounded (timm floors it: 235
    where this gives 236 for 224 / 0.95)."""
    return int(round(size / crop_fraction))


def _center_crop(image: Any, size: int, crop_fraction: float, interpolation: str = "bicubic") -> Any:
    """Resizes the short side to `eval_short_side`, crops the center ``size``."""
    import tensorflow as tf

    image = _resize_short_side(image, eval_short_side(size, crop_fraction), interpolation)
    shape = tf.shape(image)
    return tf.image.crop_to_bounding_box(image, (shape[0] - size) // 2, (shape[1] - size) // 2, size, size)


# ---------------------------------------------------------------- Pillow and NumPy (Grain workers)


def np_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """`crop_flip` for one [H, W, C] image on the host: zero padding by `pad`, a
    random crop of the original size, a horizontal flip with probability 1/2."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y, x = rng.integers(0, 2 * pad + 1, size=2)
    crop = padded[y : y + h, x : x + w]
    return np.ascontiguousarray(crop[:, ::-1]) if rng.random() < 0.5 else crop


def np_crop_window(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """`crop_window` (torchvision's draws) of a `height` x `width` image from `rng`: (top, left, height, width)."""
    window = crop_window(rng.random(2 * CROP_TRIES + 2), float(height), float(width), area_range, aspect_range)
    return tuple(int(v) for v in window)


def pil_inception_crop(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """`tf_inception_crop` (sampler "torchvision") for an opened, not yet decoded
    Pillow image: the window of `crop_window`, resized to `size` x `size`, flipped
    with probability 1/2. A JPEG is decoded only at the scale the window needs
    (`decode_box`)."""
    width, height = image.size
    top, left, h, w = np_crop_window(rng, height, width, area_range, aspect_range)
    out = decode_box(image, (left, top, left + w, top + h), size, interpolation)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def pil_center_crop(
    image: Image.Image, size: int, crop_fraction: float = 224 / 256, interpolation: str = "bicubic"
) -> np.ndarray:
    """`tf_center_crop` for an opened Pillow image: the central `size` x `size`
    of the image resized so that its short side is ``size / crop_fraction``."""
    width, height = image.size
    scale = eval_short_side(size, crop_fraction) / min(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    x, y = (new_w - size) // 2, (new_h - size) // 2
    sx, sy = width / new_w, height / new_h
    return decode_box(image, (x * sx, y * sy, (x + size) * sx, (y + size) * sy), size, interpolation)


def decode_box(
    image: Image.Image, box: tuple[float, float, float, float], size: int, interpolation: str = "bicubic"
) -> np.ndarray:
    """The `box` (left, top, right, bottom, in pixels of the full image) of an
    opened Pillow image resized to `size` x `size` RGB uint8 (`interpolation`:
    bicubic or bilinear, antialiased).

    A JPEG is decoded at the smallest of the scales 1, 1/2, 1/4 and 1/8 that keeps
    the box at least `size` pixels wide and high (Pillow's `Image.draft`: the
    decoder skips the finer DCT coefficients), so a small crop of a large photo
    costs a fraction of a full decode.
    """
    width, height = image.size
    left, top, right, bottom = box
    wanted = (math.ceil(width * size / (right - left)), math.ceil(height * size / (bottom - top)))
    drafted = image.draft("RGB", wanted)
    if drafted is not None:  # the box in the coordinates of the reduced image
        scale = drafted[1][2] / width
        box = (left * scale, top * scale, right * scale, bottom * scale)
    image = image.convert("RGB")
    resample = Image.BICUBIC if resize_method(interpolation) == "bicubic" else Image.BILINEAR
    return np.asarray(image.resize((size, size), resample, box=box), np.uint8)
