"""TrivialAugmentWide (torchvision) and RandAugment (timm) as pure JAX functions.

Both run inside a jit-compiled train step, on a batch of uint8 images [B, H, W, 3], with an independent random
draw per image. Every random choice comes from the JAX key, so the same key gives the same output.

* `trivial_augment_wide` follows torchvision's `transforms.v2.TrivialAugmentWide` (31 magnitude bins, nearest
  or bilinear interpolation): one op per image, chosen uniformly, with a uniform magnitude bin and a random sign.
  Its shear is torchvision's since vision PR 5285 (torchvision 0.12: factor m about the top-left corner), or with
  ``shear="centre"`` the op before it (torchvision 0.11: an angle of m radians about the centre, factor tan m).
* `rand_augment` follows timm's `rand_augment_transform("rand-m9-mstd0.5-inc1")`: `num_layers` ops per image, chosen
  uniformly with replacement from timm's `_RAND_INCREASING_TRANSFORMS`, each applied with probability
  `probability` at a magnitude drawn per application from N(magnitude, magnitude_std) clipped to [0, 10], with
  bilinear interpolation. `magnitude`, `magnitude_std` and `probability` may be traced scalars.

The ops themselves (`shear_x`, `rotate`, `contrast`, `equalize`, ...) are public functions on one image [H, W, 3],
uint8 or float in [0, 255], jittable and vmappable with traced magnitudes. They follow
`torchvision.transforms.v2.functional` on uint8 tensors, down to its float32 arithmetic, its sampling grid and its
rounding (truncation after the colour ops, round-half-even after a warp). On the test images the nearest-neighbour
warps, Brightness, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize and Invert give torchvision's
bytes; bilinear warps and Color differ by one grey level on a few values, where torch fuses a multiply-add into an
FMA and this module rounds the product on its own (JAX has no FMA; see `_mul`).

timm applies the RandAugment ops with PIL. `rand_augment` uses the torchvision definitions with timm's arguments
(its `LEVEL_TO_ARG`, in float32), so it differs from timm where PIL's arithmetic differs from torchvision's:

* bilinear warps (Rotate, ShearX/Y, TranslateX/YRel): PIL truncates the interpolated value where torchvision
  rounds (PIL is 0 or 1 grey level darker, about half a level on average), clamps to the edge pixel inside the
  image and switches abruptly to the fill colour outside it, where torchvision blends the last half pixel with the
  fill. Pixels on the border of the warped image can therefore differ by up to |image - fill|.
* Color: PIL's grayscale is a rounded fixed-point sum, torchvision floors a float one: within one grey level,
  shifted by up to |1 - factor| / 2 on average.
* Contrast: PIL rounds the grayscale mean to an integer, torchvision keeps the float mean of the floored grayscale:
  within one grey level, shifted by up to |1 - factor| on average.
* AutoContrast: PIL's lookup table from a float64 scale: within one grey level on a few values.
* Sharpness, Brightness, Equalize, Posterize, Solarize, SolarizeAdd and Invert: identical. PosterizeIncreasing at
  level 10 keeps 0 bits, a black image as in torchvision (the installed Pillow refuses bits=0 and timm raises).

Cost: per-image op selection is a `lax.switch` under `jax.vmap`, which evaluates every branch for every image and
selects the results. To keep that affordable the geometric ops of a layer share one warp (each image builds its
own inverse affine matrix, the identity for the non-geometric ops), and the other branches are elementwise maps,
one 3x3 blur and one 256-bin histogram per channel: whichever op an image draws, a layer costs one gather warp
plus about ten elementwise passes over the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RAND_AUGMENT_OPS",
    "TRIVIAL_AUGMENT_WIDE_OPS",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "invert",
    "posterize",
    "rand_augment",
    "rand_augment_choices",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "solarize_add",
    "translate_x",
    "translate_y",
    "trivial_augment_wide",
    "trivial_augment_wide_choices",
]

_F32 = jnp.float32
_INTERPOLATIONS = ("nearest", "bilinear")


# ---------------------------------------------------------------- helpers


def _as_float(image: jax.Array) -> jax.Array:
    return jnp.asarray(image).astype(_F32)


def _finish(x: jax.Array, dtype: jnp.dtype, rounding: str | None) -> jax.Array:
    """Clips float32 `x` to [0, 255] and casts to `dtype`. For integer dtypes the value is first truncated
    (torchvision's `.to(uint8)` after its colour ops) or rounded half to even (after a warp)."""
    x = jnp.clip(x, 0.0, 255.0)
    if jnp.issubdtype(dtype, jnp.integer) and rounding == "round":
        x = jnp.round(x)
    return x.astype(dtype)  # float -> integer conversion truncates


def _is_int(image: jax.Array) -> bool:
    return bool(jnp.issubdtype(jnp.asarray(image).dtype, jnp.integer))


def _mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a * b, rounded to float32 on its own: hidden behind a select that is never taken, the product cannot be
    fused with the add that consumes it into an FMA. XLA fuses or not depending on the surrounding program, so
    without this an op could differ by one grey level alone and inside the batched augmentations."""
    p = a * b
    return jnp.where(jnp.isnan(p), jnp.zeros_like(p), p)


def _as_levels(image: jax.Array) -> jax.Array:
    """int32 grey levels in [0, 255] (float input is rounded)."""
    image = jnp.asarray(image)
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.int32)
    return jnp.clip(jnp.round(image), 0, 255).astype(jnp.int32)


def _fill_vector(fill: Sequence[float] | jax.Array, channels: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(fill, _F32).reshape(-1), (channels,))


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, bit for bit (torch computes each half with a fused multiply-add)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    i = np.arange(steps)
    out = np.where(i < steps // 2, np.float64(start32) + step * i, np.float64(end32) - step * (steps - 1 - i))
    return out.astype(np.float32)


# ---------------------------------------------------------------- geometry


def _identity_matrix() -> jax.Array:
    return jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], _F32)


SHEAR_PIVOTS = ("corner", "centre")


def _shear_x_matrix(factor: jax.Array, height: int, pivot: str = "corner") -> jax.Array:
    # torchvision's inverse matrix for shear=[degrees(atan(factor)), 0] about the corner (center=[0, 0]), or
    # about the centre (its default center) with no offset.
    f = jnp.asarray(factor, _F32)
    one, zero = jnp.ones((), _F32), jnp.zeros((), _F32)
    return jnp.stack([one, f, f * _F32(0.5 * height) if pivot == "corner" else zero, zero, one, zero])


def _shear_y_matrix(factor: jax.Array, width: int, pivot: str = "corner") -> jax.Array:
    f = jnp.asarray(factor, _F32)
    one, zero = jnp.ones((), _F32), jnp.zeros((), _F32)
    return jnp.stack([one, zero, zero, f, one, f * _F32(0.5 * width) if pivot == "corner" else zero])


def _translate_matrix(dx: jax.Array, dy: jax.Array) -> jax.Array:
    one, zero = jnp.ones((), _F32), jnp.zeros((), _F32)
    return jnp.stack([one, zero, -jnp.asarray(dx, _F32), zero, one, -jnp.asarray(dy, _F32)])


def _cos_sin_degrees(degrees: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of an angle in degrees, reduced to [-45, 45] first so that multiples of 90 degrees are exact
    (torchvision computes them in float64; a float32 cos(pi / 2) would move half-pixel ties)."""
    degrees = jnp.asarray(degrees, _F32)
    quadrant = jnp.round(degrees / 90.0)
    theta = jnp.deg2rad(degrees - 90.0 * quadrant)
    c, s = jnp.cos(theta), jnp.sin(theta)
    q = jnp.mod(quadrant.astype(jnp.int32), 4)
    cos = jnp.select([q == 0, q == 1, q == 2], [c, -s, -c], s)
    sin = jnp.select([q == 0, q == 1, q == 2], [s, c, -s], -c)
    return cos, sin


def _rotate_matrix(degrees: jax.Array) -> jax.Array:
    # torchvision's rotate: inverse matrix of a counter-clockwise rotation about the image centre.
    c, s = _cos_sin_degrees(degrees)
    zero = jnp.zeros((), _F32)
    return jnp.stack([c, -s, zero, s, c, zero])


def _affine_warp(
    image: jax.Array, matrix: jax.Array, fill: Sequence[float] | jax.Array, interpolation: str
) -> jax.Array:
    """torchvision's `_affine_grid` + `grid_sample(padding_mode="zeros", align_corners=False)` + fill mask.

    `matrix` is torchvision's inverse affine matrix (6 numbers) acting on pixel coordinates centred on the image.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    image = jnp.asarray(image)
    h, w, c = image.shape
    x = _as_float(image).reshape(h * w, c)
    fill = _fill_vector(fill, c)
    m = jnp.asarray(matrix, _F32)
    # A true division (the barrier keeps XLA from multiplying by a rounded reciprocal instead), as torchvision's.
    half_size = jax.lax.optimization_barrier(jnp.array([0.5 * w, 0.5 * w, 0.5 * w, 0.5 * h, 0.5 * h, 0.5 * h], _F32))
    r = m / half_size
    xs = jnp.asarray(np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2))[None, :]
    ys = jnp.asarray(np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2))[:, None]
    gx = _mul(xs, r[0]) + _mul(ys, r[1]) + r[2]
    gy = _mul(xs, r[3]) + _mul(ys, r[4]) + r[5]
    ix = _mul(gx + 1.0, _F32(0.5 * w)) - 0.5  # grid_sample's unnormalisation, align_corners=False
    iy = _mul(gy + 1.0, _F32(0.5 * h)) - 0.5

    def tap(yy: jax.Array, xx: jax.Array) -> tuple[jax.Array, jax.Array]:
        inside = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
        index = jnp.clip(yy, 0, h - 1).astype(jnp.int32) * w + jnp.clip(xx, 0, w - 1).astype(jnp.int32)
        values = jnp.take(x, index.reshape(-1), axis=0).reshape(h, w, c)
        return jnp.where(inside[..., None], values, 0.0), inside.astype(_F32)

    if interpolation == "nearest":
        values, inside = tap(jnp.round(iy), jnp.round(ix))  # nearbyint: half to even
        out = jnp.where(inside[..., None] < 0.5, fill, values)
    else:
        x0, y0 = jnp.floor(ix), jnp.floor(iy)
        wx, wy = ix - x0, iy - y0
        ex, sy = 1.0 - wx, 1.0 - wy
        weights = (sy * ex, sy * wx, wy * ex, wy * wx)  # nw, ne, sw, se
        taps = (tap(y0, x0), tap(y0, x0 + 1), tap(y0 + 1, x0), tap(y0 + 1, x0 + 1))
        interp = sum(_mul(v, wt[..., None]) for (v, _), wt in zip(taps, weights))
        mask = sum(_mul(inside, wt) for (_, inside), wt in zip(taps, weights))[..., None]
        out = _mul(interp - fill, mask) + fill
    return _finish(out, image.dtype, "round")


def shear_x(
    image: jax.Array,
    factor: jax.Array | float,
    fill: Sequence[float] = (0, 0, 0),
    interpolation: str = "nearest",
    pivot: str = "corner",
) -> jax.Array:
    """Horizontal shear: output pixel (x, y) samples input (x + factor * y, y), about the top-left corner.

    torchvision's `affine(shear=[degrees(atan(factor)), 0], center=[0, 0])` as its TrivialAugmentWide calls it,
    which is also PIL's `transform(AFFINE, (1, factor, 0, 0, 1, 0))` that timm uses. ``pivot="centre"``: about
    the image's centre, `affine`'s default, as torchvision's TrivialAugmentWide called it before vision PR 5285.
    """
    return _affine_warp(image, _shear_x_matrix(factor, jnp.shape(image)[0], pivot), fill, interpolation)


def shear_y(
    image: jax.Array,
    factor: jax.Array | float,
    fill: Sequence[float] = (0, 0, 0),
    interpolation: str = "nearest",
    pivot: str = "corner",
) -> jax.Array:
    """Vertical shear: output pixel (x, y) samples input (x, y + factor * x), about the top-left corner
    (``pivot="centre"``: about the centre, as `shear_x`)."""
    return _affine_warp(image, _shear_y_matrix(factor, jnp.shape(image)[1], pivot), fill, interpolation)


def translate_x(
    image: jax.Array, pixels: jax.Array | float, fill: Sequence[float] = (0, 0, 0), interpolation: str = "nearest"
) -> jax.Array:
    """Moves the content `pixels` to the right (torchvision's `affine(translate=[pixels, 0])`).

    PIL's `transform(AFFINE, (1, 0, p, 0, 1, 0))` that timm uses moves it left: it is `translate_x(image, -p)`.
    """
    return _affine_warp(image, _translate_matrix(pixels, 0.0), fill, interpolation)


def translate_y(
    image: jax.Array, pixels: jax.Array | float, fill: Sequence[float] = (0, 0, 0), interpolation: str = "nearest"
) -> jax.Array:
    """Moves the content `pixels` down (torchvision's `affine(translate=[0, pixels])`)."""
    return _affine_warp(image, _translate_matrix(0.0, pixels), fill, interpolation)


def rotate(
    image: jax.Array, degrees: jax.Array | float, fill: Sequence[float] = (0, 0, 0), interpolation: str = "nearest"
) -> jax.Array:
    """Counter-clockwise rotation about the image centre, same size (torchvision's `rotate`, as PIL's)."""
    return _affine_warp(image, _rotate_matrix(degrees), fill, interpolation)


# ---------------------------------------------------------------- colour


def _grayscale(x: jax.Array, floor: bool) -> jax.Array:
    """torchvision's float grayscale (ITU-R 601), floored for integer images, [H, W]."""
    gray = _mul(x[..., 0], _F32(0.2989)) + _mul(x[..., 1], _F32(0.587)) + _mul(x[..., 2], _F32(0.114))
    return jnp.floor(gray) if floor else gray


def _blend(x: jax.Array, degenerate: jax.Array, ratio: jax.Array, dtype: jnp.dtype) -> jax.Array:
    ratio = jnp.asarray(ratio, _F32)
    return _finish(_mul(x, ratio) + _mul(degenerate, 1.0 - ratio), dtype, None)


def brightness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Multiplies by `factor` (torchvision's `adjust_brightness`; truncated, as PIL's blend with black)."""
    return _finish(_as_float(image) * jnp.asarray(factor, _F32), jnp.asarray(image).dtype, None)


def color(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Blends with the grayscale image, floored for uint8 (torchvision's `adjust_saturation`; PIL's
    `ImageEnhance.Color` rounds a fixed-point grayscale: within one grey level)."""
    x = _as_float(image)
    gray = _grayscale(x, _is_int(image))[..., None]
    return _blend(x, gray, factor, jnp.asarray(image).dtype)


def contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Blends with the mean of the grayscale image, floored for uint8 (torchvision's `adjust_contrast`; PIL's
    `ImageEnhance.Contrast` rounds the mean to an integer: within one grey level)."""
    x = _as_float(image)
    mean = jnp.mean(_grayscale(x, _is_int(image)))
    return _blend(x, mean, factor, jnp.asarray(image).dtype)


def sharpness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Blends with a 3x3 smoothed image (kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded), border pixels
    kept (torchvision's `adjust_sharpness`, as PIL's `ImageEnhance.Sharpness`)."""
    image = jnp.asarray(image)
    h, w, _ = image.shape
    if h <= 2 or w <= 2:
        return image
    x = _as_float(image)
    a, b = _F32(1.0 / 13.0), _F32(5.0 / 13.0)
    blurred = jnp.zeros((h - 2, w - 2, x.shape[-1]), _F32)
    for dy in range(3):
        for dx in range(3):
            blurred = blurred + _mul(x[dy : dy + h - 2, dx : dx + w - 2], b if dy == dx == 1 else a)
    if _is_int(image):
        blurred = jnp.round(blurred)
    view = x[1:-1, 1:-1]
    inner = view + _mul(1.0 - jnp.asarray(factor, _F32), blurred - view)
    return _finish(x.at[1:-1, 1:-1].set(inner), image.dtype, None)


def posterize(image: jax.Array, bits: jax.Array | int) -> jax.Array:
    """Keeps the `bits` most significant bits, 0 to 8 (torchvision's `posterize`; float input is rounded)."""
    image = jnp.asarray(image)
    mask = jnp.left_shift(jnp.int32(255), 8 - jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)) & 255
    return (_as_levels(image) & mask).astype(image.dtype)


def solarize(image: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """Inverts the values >= `threshold` (torchvision's `solarize`, as PIL's)."""
    image = jnp.asarray(image)
    x = _as_float(image)
    return jnp.where(x >= jnp.asarray(threshold, _F32), 255.0 - x, x).astype(image.dtype)


def solarize_add(image: jax.Array, addition: jax.Array | float, threshold: jax.Array | float = 128) -> jax.Array:
    """Adds `addition` to the values < `threshold`, clipped to 255 (timm's `solarize_add`, a PIL lookup table)."""
    image = jnp.asarray(image)
    x = _as_float(image)
    added = jnp.minimum(x + jnp.asarray(addition, _F32), 255.0)
    return jnp.where(x < jnp.asarray(threshold, _F32), added, x).astype(image.dtype)


def invert(image: jax.Array) -> jax.Array:
    """255 - image."""
    image = jnp.asarray(image)
    return (255.0 - _as_float(image)).astype(image.dtype)


def autocontrast(image: jax.Array) -> jax.Array:
    """Stretches each channel to [0, 255], a flat channel left alone (torchvision's `autocontrast`; PIL's
    lookup table agrees to within one grey level)."""
    image = jnp.asarray(image)
    x = _as_float(image)
    lo = jnp.min(x, axis=(0, 1))
    hi = jnp.max(x, axis=(0, 1))
    flat = hi == lo
    inv_scale = jnp.where(flat, 1.0, (hi - lo) * _F32(1.0 / 255.0))
    lo = jnp.where(flat, 0.0, lo)
    # A true division, as torchvision's: XLA would otherwise multiply by the reciprocal, which truncates
    # differently where the quotient is a whole number.
    inv_scale = jax.lax.optimization_barrier(jnp.broadcast_to(inv_scale, x.shape))
    return _finish((x - lo) / inv_scale, image.dtype, None)


def equalize(image: jax.Array) -> jax.Array:
    """Histogram equalisation per channel with PIL's lookup table (torchvision's `equalize`; float input is
    rounded)."""
    image = jnp.asarray(image)
    h, w, c = image.shape
    flat = _as_levels(image).reshape(h * w, c)
    hist = jax.vmap(lambda v: jnp.zeros(256, jnp.int32).at[v].add(1), in_axes=1)(flat)  # [C, 256]
    cum = jnp.cumsum(hist, axis=-1)
    last = jnp.argmax(cum, axis=-1)  # the last non-empty bin
    step = (h * w - jnp.take_along_axis(hist, last[:, None], axis=-1)) // 255  # [C, 1]
    lut = jnp.clip((cum[:, :-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
    lut = jnp.concatenate([jnp.zeros((c, 1), jnp.int32), lut], axis=-1)
    out = lut[jnp.arange(c)[None, :], flat]
    out = jnp.where(step[:, 0][None, :] != 0, out, flat)
    return out.reshape(h, w, c).astype(image.dtype)


# ---------------------------------------------------------------- TrivialAugmentWide

TRIVIAL_AUGMENT_WIDE_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_TA_BINS = 31


def _ta_tables() -> tuple[np.ndarray, np.ndarray]:
    """[14, 31] unsigned op arguments as torchvision computes them, and which ops take a random sign."""
    enhance = _torch_linspace(0.0, 0.99, _TA_BINS)
    translate = np.trunc(_torch_linspace(0.0, 32.0, _TA_BINS))  # torchvision: int(magnitude)
    posterize_bits = np.round(8 - np.arange(_TA_BINS) / ((_TA_BINS - 1) / 6))
    # transforms.v2: threshold = 255 * magnitude, in float64, compared with the image in float32.
    solarize_threshold = (255.0 * _torch_linspace(1.0, 0.0, _TA_BINS).astype(np.float64)).astype(np.float32)
    zero = np.zeros(_TA_BINS, np.float32)
    table = {
        "Identity": (zero, False),
        "ShearX": (enhance, True),
        "ShearY": (enhance, True),
        "TranslateX": (translate, True),
        "TranslateY": (translate, True),
        "Rotate": (_torch_linspace(0.0, 135.0, _TA_BINS), True),
        "Brightness": (enhance, True),
        "Color": (enhance, True),
        "Contrast": (enhance, True),
        "Sharpness": (enhance, True),
        "Posterize": (posterize_bits, False),
        "Solarize": (solarize_threshold, False),
        "AutoContrast": (zero, False),
        "Equalize": (zero, False),
    }
    args = np.stack([table[name][0] for name in TRIVIAL_AUGMENT_WIDE_OPS]).astype(np.float32)
    signed = np.array([table[name][1] for name in TRIVIAL_AUGMENT_WIDE_OPS])
    return args, signed


_TA_ARGS, _TA_SIGNED = _ta_tables()
_TA_ENHANCE = np.array([name in ("Brightness", "Color", "Contrast", "Sharpness") for name in TRIVIAL_AUGMENT_WIDE_OPS])


def trivial_augment_wide_choices(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """The random draws of `trivial_augment_wide`: per image an op index into `TRIVIAL_AUGMENT_WIDE_OPS` (int32
    [B]) and the argument its op function receives (float32 [B]): the signed shear factor, the signed whole
    number of pixels, the signed angle in degrees, the enhancement factor 1 + signed magnitude, the posterize
    bits or the solarize threshold (0 for the ops without a magnitude)."""
    k_op, k_bin, k_sign = jax.random.split(key, 3)
    ops = jax.random.randint(k_op, (batch_size,), 0, len(TRIVIAL_AUGMENT_WIDE_OPS))
    bins = jax.random.randint(k_bin, (batch_size,), 0, _TA_BINS)
    negate = jax.random.bernoulli(k_sign, 0.5, (batch_size,)) & jnp.asarray(_TA_SIGNED)[ops]
    magnitude = jnp.asarray(_TA_ARGS)[ops, bins]
    magnitude = jnp.where(negate, -magnitude, magnitude)
    return ops, jnp.where(jnp.asarray(_TA_ENHANCE)[ops], 1.0 + magnitude, magnitude)


def _ta_apply(
    image: jax.Array, op: jax.Array, arg: jax.Array, fill: jax.Array, interpolation: str, shear: str = "corner"
) -> jax.Array:
    """One TrivialAugmentWide op on one image (`shear`: as `trivial_augment_wide`'s)."""
    h, w, _ = image.shape
    factor = arg if shear == "corner" else jnp.tan(arg)  # before PR 5285: shear=[degrees(m), 0], factor tan(m)
    matrices = jnp.stack(
        [
            _identity_matrix(),
            _shear_x_matrix(factor, h, shear),
            _shear_y_matrix(factor, w, shear),
            _translate_matrix(arg, 0.0),
            _translate_matrix(0.0, arg),
            _rotate_matrix(arg),
        ]
    )
    geometric = (op >= 1) & (op <= 5)
    warped = _affine_warp(image, matrices[jnp.where(geometric, op, 0)], fill, interpolation)
    pixel_ops: list[Callable[[jax.Array, jax.Array], jax.Array]] = [
        lambda x, a: x,
        brightness,
        color,
        contrast,
        sharpness,
        lambda x, a: posterize(x, a.astype(jnp.int32)),
        solarize,
        lambda x, a: autocontrast(x),
        lambda x, a: equalize(x),
    ]
    pixels = jax.lax.switch(jnp.where(op >= 6, op - 5, 0), pixel_ops, image, arg)
    return jnp.where(geometric, warped, pixels)


def trivial_augment_wide(
    key: jax.Array,
    images: jax.Array,
    fill: Sequence[float] = (0, 0, 0),
    interpolation: str = "nearest",
    shear: str = "corner",
) -> jax.Array:
    """torchvision's TrivialAugmentWide (31 bins) with an independent draw per image.

    Args:
      key: a PRNG key.
      images: uint8 [B, H, W, 3].
      fill: the colour of the pixels a geometric op brings in from outside the image.
      interpolation: of the geometric ops, "nearest" (torchvision's default) or
        "bilinear" (torchvision's classification reference, ``presets.py``).
      shear: ShearX/Y of magnitude m: "corner", torchvision's since vision PR 5285
        (0.12 on: factor m about the top-left corner), or "centre", torchvision 0.11's
        (an angle of m radians about the centre: factor tan m, up to 1.52).

    Returns:
      uint8 [B, H, W, 3].
    """
    images = jnp.asarray(images)
    ops, args = trivial_augment_wide_choices(key, images.shape[0])
    fill_vec = _fill_vector(fill, images.shape[-1])
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    if shear not in SHEAR_PIVOTS:
        raise ValueError(f"shear must be one of {SHEAR_PIVOTS}, got {shear!r}")
    apply = functools.partial(_ta_apply, interpolation=interpolation, shear=shear)
    return jax.vmap(apply, in_axes=(0, 0, 0, None))(images, ops, args, fill_vec)


# ---------------------------------------------------------------- RandAugment (timm, "inc1")

RAND_AUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_LEVEL_DENOM = 10.0
_TRANSLATE_PCT = 0.45
# Position of each op among the shared warp's matrices (0: identity) and among the pixel branches (0: identity).
_RA_GEOMETRIC = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 5], np.int32)
_RA_PIXEL = np.array([1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0], np.int32)


def _rand_augment_arg(op: jax.Array, level: jax.Array, negate: jax.Array) -> jax.Array:
    """timm's level-to-argument functions (`LEVEL_TO_ARG`) for the op `RAND_AUGMENT_OPS[op]`, at `level` in
    [0, 10], with the random sign of the signed ops given by `negate`."""
    frac = jnp.asarray(level, _F32) / _LEVEL_DENOM
    sign = jnp.where(negate, -1.0, 1.0).astype(_F32)
    zero = jnp.zeros_like(frac)
    enhance = jnp.maximum(0.1, 1.0 + sign * frac * 0.9)
    shear = sign * frac * 0.3
    translate = sign * frac * _TRANSLATE_PCT
    args = jnp.stack(
        [
            zero,  # AutoContrast
            zero,  # Equalize
            zero,  # Invert
            sign * frac * 30.0,  # Rotate: degrees
            4.0 - jnp.floor(frac * 4.0),  # PosterizeIncreasing: bits
            256.0 - jnp.minimum(256.0, jnp.floor(frac * 256.0)),  # SolarizeIncreasing: threshold
            jnp.minimum(128.0, jnp.floor(frac * 110.0)),  # SolarizeAdd: addition
            enhance,
            enhance,
            enhance,
            enhance,
            shear,
            shear,
            translate,  # TranslateXRel: fraction of the width (PIL's sense: positive moves left)
            translate,
        ]
    )
    return args[op]


def rand_augment_choices(
    key: jax.Array,
    batch_size: int,
    magnitude: jax.Array | float = 9.0,
    magnitude_std: jax.Array | float = 0.5,
    num_layers: int = 2,
    probability: jax.Array | float = 0.5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The random draws of `rand_augment`, each [B, num_layers]: the op index into `RAND_AUGMENT_OPS` (int32),
    the argument timm's op receives at the drawn level and sign (float32: degrees, bits, threshold, addition,
    enhancement factor, shear factor or translation as a fraction of the image size, positive to the left/up as
    in PIL; 0 for the ops without one), and whether the op is applied (bool)."""
    k_op, k_apply, k_gauss, k_uniform, k_sign = jax.random.split(key, 5)
    shape = (batch_size, num_layers)
    ops = jax.random.randint(k_op, shape, 0, len(RAND_AUGMENT_OPS))
    apply = jax.random.uniform(k_apply, shape) < probability
    magnitude = jnp.asarray(magnitude, _F32)
    magnitude_std = jnp.asarray(magnitude_std, _F32)
    gauss = magnitude + magnitude_std * jax.random.normal(k_gauss, shape)
    uniform = jax.random.uniform(k_uniform, shape) * magnitude  # timm: mstd > 100 (or inf) samples U(0, m)
    level = jnp.where(magnitude_std > 100.0, uniform, jnp.where(magnitude_std > 0.0, gauss, magnitude))
    level = jnp.clip(level, 0.0, _LEVEL_DENOM)
    negate = jax.random.bernoulli(k_sign, 0.5, shape)
    args = jax.vmap(jax.vmap(_rand_augment_arg))(ops, level, negate)
    return ops, args, apply


def _ra_apply(image: jax.Array, op: jax.Array, arg: jax.Array, apply: jax.Array, fill: jax.Array) -> jax.Array:
    """One RandAugment layer on one image."""
    h, w, _ = image.shape
    matrices = jnp.stack(
        [
            _identity_matrix(),
            _rotate_matrix(arg),
            _shear_x_matrix(arg, h),
            _shear_y_matrix(arg, w),
            _translate_matrix(-arg * w, 0.0),
            _translate_matrix(0.0, -arg * h),
        ]
    )
    geometric_index = jnp.asarray(_RA_GEOMETRIC)[op]
    warped = _affine_warp(image, matrices[geometric_index], fill, "bilinear")
    pixel_ops: list[Callable[[jax.Array, jax.Array], jax.Array]] = [
        lambda x, a: x,
        lambda x, a: autocontrast(x),
        lambda x, a: equalize(x),
        lambda x, a: invert(x),
        lambda x, a: posterize(x, a.astype(jnp.int32)),
        solarize,
        solarize_add,
        color,
        contrast,
        brightness,
        sharpness,
    ]
    pixels = jax.lax.switch(jnp.asarray(_RA_PIXEL)[op], pixel_ops, image, arg)
    out = jnp.where(geometric_index > 0, warped, pixels)
    return jnp.where(apply, out, image)


def rand_augment(
    key: jax.Array,
    images: jax.Array,
    magnitude: jax.Array | float = 9.0,
    magnitude_std: jax.Array | float = 0.5,
    num_layers: int = 2,
    probability: jax.Array | float = 0.5,
    fill: Sequence[float] = (124, 116, 104),
) -> jax.Array:
    """timm's RandAugment `rand-m{magnitude}-mstd{magnitude_std}-inc1` with an independent draw per image.

    Args:
      key: a PRNG key.
      images: uint8 [B, H, W, 3].
      magnitude: the mean magnitude on timm's 0-10 scale (may be traced).
      magnitude_std: the standard deviation of the magnitude per op application (may be traced); 0 keeps it
        fixed, above 100 (or inf) draws it uniformly in [0, magnitude], as timm's config parser does.
      num_layers: the ops per image, chosen with replacement (static).
      probability: the probability that each chosen op is applied (may be traced).
      fill: the colour brought in by the geometric ops (timm: the dataset mean in 0-255).

    Returns:
      uint8 [B, H, W, 3].
    """
    images = jnp.asarray(images)
    ops, args, apply = rand_augment_choices(key, images.shape[0], magnitude, magnitude_std, num_layers, probability)
    fill_vec = _fill_vector(fill, images.shape[-1])
    layer = jax.vmap(_ra_apply, in_axes=(0, 0, 0, 0, None))

    def body(x: jax.Array, draws: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        return layer(x, *draws, fill_vec), None

    images, _ = jax.lax.scan(body, images, (ops.T, args.T, apply.T))  # one compiled layer, whatever num_layers
    return images
