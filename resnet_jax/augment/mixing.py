"""Mixup and CutMix as pure JAX functions, run inside the compiled train step.

The semantics are timm's `timm.data.Mixup` in its default mode "batch": one
lambda for the whole batch, and the partner of image ``i`` is image ``B-1-i``
(the batch flipped). ``style="torchvision"`` is torchvision's instead (its
reference's ``RandomMixup``/``RandomCutmix``, ``transforms.v2.MixUp``/``CutMix``):
the partner of image ``i`` is image ``i-1`` (the batch rolled by one), and the
cutmix box has half-sides ``int(sqrt(1 - lam) H / 2)`` around a uniform centre.
`mix_batch` with ``chunk=N`` draws one lambda (and box) for each consecutive
chunk of N images and pairs within the chunk: what timm and torchvision do on
each process's batch of N. Every random choice is drawn from a PRNG key and every
hyperparameter (alphas, probabilities, smoothing) may be a traced JAX scalar,
so the functions can be swept per population member under `jax.vmap`: there is
no Python control flow on them.

Dtypes: integer images (uint8) are mixed in float32 and come back as float32
without rounding (the trainer normalises afterwards); floating images keep
their dtype. `cutmix` alone is a pure selection and keeps any dtype.

Images are [B, H, W, C] (channels last), labels int [B].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Box = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


class MixParams(NamedTuple):
    """One batch's draw: the lambda of the targets (box-corrected for cutmix, 1.0
    when the batch is not mixed), whether cutmix was chosen, and the cutmix box
    ``(y0, y1, x0, x1)`` (drawn whatever was chosen; used only by cutmix)."""

    lam: jax.Array
    use_cutmix: jax.Array
    box: Box


def _float_dtype(dtype: Any) -> Any:
    """The dtype mixed images come back in: floating dtypes kept, others float32."""
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


STYLES = ("timm", "torchvision")


def partner(x: jax.Array, style: str = "timm") -> jax.Array:
    """The batch of partners: flipped (timm: image ``B-1-i``) or rolled by one
    (torchvision's ``batch.roll(1, 0)``: image ``i-1``)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return x[::-1] if style == "timm" else jnp.roll(x, 1, axis=0)


def mixup_target(
    labels: jax.Array, num_classes: int, lam: Any, smoothing: Any = 0.0, style: str = "timm"
) -> jax.Array:
    """timm's `mixup_target`: int labels [B] -> float32 soft targets [B, num_classes].

    The one-hot targets are smoothed first (``smoothing / num_classes`` off,
    ``1 - smoothing + smoothing / num_classes`` on), then mixed with the
    partners' (`partner`): ``y * lam + partner(y) * (1 - lam)``.
    """
    smoothing = jnp.asarray(smoothing, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    hot = labels[:, None] == jnp.arange(num_classes)
    y = jnp.where(hot, on, off).astype(jnp.float32)
    return y * lam + partner(y, style) * (1.0 - lam)


def mixup(images: jax.Array, lam: Any, style: str = "timm") -> jax.Array:
    """``images * lam + partner(images) * (1 - lam)``: [B, H, W, C] -> same shape.

    Integer images come back as float32 (not rounded); floating images keep
    their dtype (computed in at least float32).
    """
    out = _float_dtype(images.dtype)
    work = jnp.promote_types(out, jnp.float32)
    x = images.astype(work)
    lam = jnp.asarray(lam, work)
    return (x * lam + partner(x, style) * (1.0 - lam)).astype(out)


def _box_mask(box: Box, height: int, width: int) -> jax.Array:
    """bool [H, W]: True inside ``y0 <= y < y1, x0 <= x < x1``."""
    y0, y1, x0, x1 = box
    rows = jnp.arange(height)
    cols = jnp.arange(width)
    inside_y = (rows >= y0) & (rows < y1)
    inside_x = (cols >= x0) & (cols < x1)
    return inside_y[:, None] & inside_x[None, :]


def cutmix(images: jax.Array, box: Box, style: str = "timm") -> jax.Array:
    """Pastes the partners' pixels (`partner`) inside `box` = (y0, y1, x0, x1) into each image.

    The box's ints may be traced (a mask is used, no dynamic slicing). Images
    [B, H, W, C] of any dtype; the dtype is kept.
    """
    _, h, w, _ = images.shape
    mask = _box_mask(box, h, w)[None, :, :, None]
    return jnp.where(mask, partner(images, style), images)


def cutmix_box(key: jax.Array, lam: Any, height: int, width: int, style: str = "timm") -> tuple[Box, jax.Array]:
    """timm's `rand_bbox` and its lambda correction (`cutmix_bbox_and_lam`, correct_lam=True).

    The cut is ``int(H * sqrt(1 - lam))`` by ``int(W * sqrt(1 - lam))``, its
    centre uniform over the pixels, clipped to the image (``style="torchvision"``:
    half-sides ``int(H * sqrt(1 - lam) / 2)`` and ``int(W * sqrt(1 - lam) / 2)``
    either side of the centre, as `transforms.v2.CutMix`). Returns the box
    ``(y0, y1, x0, x1)`` (int32 scalars) and the corrected lambda
    ``1 - box_area / (H * W)`` (float32).
    """
    lam = jnp.clip(jnp.asarray(lam, jnp.float32), 0.0, 1.0)
    ratio = jnp.sqrt(1.0 - lam)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    if style == "torchvision":
        half_h = jnp.floor(0.5 * ratio * height).astype(jnp.int32)
        half_w = jnp.floor(0.5 * ratio * width).astype(jnp.int32)
        below_h, above_h, below_w, above_w = half_h, half_h, half_w, half_w
    else:
        cut_h = jnp.floor(height * ratio).astype(jnp.int32)
        cut_w = jnp.floor(width * ratio).astype(jnp.int32)
        below_h, above_h, below_w, above_w = cut_h // 2, (cut_h + 1) // 2, cut_w // 2, (cut_w + 1) // 2
    y0 = jnp.clip(cy - below_h, 0, height)
    y1 = jnp.clip(cy + above_h, 0, height)
    x0 = jnp.clip(cx - below_w, 0, width)
    x1 = jnp.clip(cx + above_w, 0, width)
    area = (y1 - y0) * (x1 - x0)
    corrected = 1.0 - area.astype(jnp.float32) / float(height * width)
    return (y0, y1, x0, x1), corrected


def mix_params(
    key: jax.Array,
    height: int,
    width: int,
    *,
    mixup_alpha: Any,
    cutmix_alpha: Any,
    switch_prob: Any = 0.5,
    prob: Any = 1.0,
    style: str = "timm",
) -> MixParams:
    """timm's `Mixup._params_per_batch` followed by the cutmix box and lambda correction.

    With probability `prob` the batch is mixed: cutmix with probability
    `switch_prob` when both alphas are > 0, only mixup when ``cutmix_alpha == 0``,
    only cutmix when ``mixup_alpha == 0``; lambda ~ Beta(alpha, alpha) of the
    chosen method. When both alphas are 0 (or the batch is not mixed) lambda is 1.
    All hyperparameters may be traced scalars.
    """
    k_apply, k_switch, k_lam, k_box = jax.random.split(key, 4)
    mixup_alpha = jnp.asarray(mixup_alpha, jnp.float32)
    cutmix_alpha = jnp.asarray(cutmix_alpha, jnp.float32)
    mixup_on = mixup_alpha > 0
    cutmix_on = cutmix_alpha > 0
    apply = (jax.random.uniform(k_apply) < prob) & (mixup_on | cutmix_on)
    switch = jax.random.uniform(k_switch) < switch_prob
    use_cutmix = apply & jnp.where(mixup_on & cutmix_on, switch, cutmix_on)
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
    alpha = jnp.where(alpha > 0, alpha, 1.0)  # a safe draw where the alpha is 0 (its lambda is then unused)
    lam = jnp.where(apply, jax.random.beta(k_lam, alpha, alpha), 1.0).astype(jnp.float32)
    box, corrected = cutmix_box(k_box, lam, height, width, style)
    lam = jnp.where(use_cutmix, corrected, lam)
    return MixParams(lam=lam, use_cutmix=use_cutmix, box=box)


def mix_batch(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    mixup_alpha: Any,
    cutmix_alpha: Any,
    switch_prob: Any = 0.5,
    prob: Any = 1.0,
    smoothing: Any = 0.0,
    chunk: int = 0,
    style: str = "timm",
) -> tuple[jax.Array, jax.Array]:
    """timm's `Mixup(mode="batch")` on a batch: images [B, H, W, C], int labels [B]
    -> (mixed images [B, H, W, C], float32 soft targets [B, num_classes]).

    The draw is `mix_params`' (same key, same draw). With `chunk` N (0 < N < B,
    dividing B) each chunk ``[kN, (k+1)N)`` is mixed on its own, with the draw of
    ``jax.random.split(key, B // N)[k]``, its images paired within it (`style`,
    see `partner`). Integer images come back as float32, floating images keep
    their dtype. An unmixed batch comes back with its values unchanged and
    smoothed one-hot targets.
    """
    b, h, w, c = images.shape
    draw = dict(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, prob=prob)
    out = _float_dtype(images.dtype)

    def one(key: jax.Array, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = mix_params(key, h, w, **draw, style=style)
        mixed = jnp.where(p.use_cutmix, cutmix(images, p.box, style).astype(out), mixup(images, p.lam, style))
        return mixed, mixup_target(labels, num_classes, p.lam, smoothing, style)

    if not 0 < chunk < b:
        return one(key, images, labels)
    if b % chunk:
        raise ValueError(f"a batch of {b} does not split into chunks of {chunk}")
    n = b // chunk
    mixed, targets = jax.vmap(one)(
        jax.random.split(key, n), images.reshape(n, chunk, h, w, c), labels.reshape(n, chunk)
    )
    return mixed.reshape(b, h, w, c), targets.reshape(b, num_classes)
