"""Augmentations: CIFAR pad-and-crop + flip (TensorFlow, JAX and NumPy versions
with the same semantics) and Inception-style crops for ImageNet-scale images
(TensorFlow, and Pillow for the Grain pipeline).

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


def tf_inception_crop(
    encoded: Any,
    seed: Any,
    size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> Any:
    """Random-resized crop (area 8-100%, aspect 3/4-4/3) + flip, resized to `size`
    (`interpolation`: "bicubic" or "bilinear", antialiased).

    Only the crop window of a JPEG is decoded. Falls back to a center crop when
    no valid window is found in 10 tries.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = tf.image.extract_jpeg_shape(encoded) if _is_jpeg(encoded) else tf.shape(_decode(encoded))
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seeds[0],
        min_object_covered=area_range[0],
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], box_size[0], box_size[1]])
    whole = tf.reduce_all(tf.equal(box_size[:2], shape[:2]))
    image = tf.cond(
        whole,
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


def _center_crop(image: Any, size: int, crop_fraction: float, interpolation: str = "bicubic") -> Any:
    """Resizes the short side to ``size / crop_fraction``, crops the center ``size``."""
    import tensorflow as tf

    image = _resize_short_side(image, int(round(size / crop_fraction)), interpolation)
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


def pil_inception_crop(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    crop_fraction: float = 224 / 256,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """`tf_inception_crop` for an opened, not yet decoded Pillow image: a window of
    8-100% of the area and aspect 3/4-4/3 (drawn as torchvision's RandomResizedCrop
    does: area uniform, aspect log-uniform, 10 tries, else `pil_center_crop`),
    resized to `size` x `size`, flipped with probability 1/2. A JPEG is decoded
    only at the scale the window needs (`decode_box`)."""
    width, height = image.size
    box = None
    for _ in range(10):
        area = width * height * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(*np.log(aspect_range)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x, y, x + w, y + h)
            break
    if box is None:
        out = pil_center_crop(image, size, crop_fraction, interpolation)
    else:
        out = decode_box(image, box, size, interpolation)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def pil_center_crop(
    image: Image.Image, size: int, crop_fraction: float = 224 / 256, interpolation: str = "bicubic"
) -> np.ndarray:
    """`tf_center_crop` for an opened Pillow image: the central `size` x `size`
    of the image resized so that its short side is ``size / crop_fraction``."""
    width, height = image.size
    scale = round(size / crop_fraction) / min(width, height)
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
