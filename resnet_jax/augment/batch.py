"""The augmentations of today's recipes that run on the accelerator, inside the
compiled train step, on whatever batch a pipeline made: TrivialAugmentWide or
RandAugment (`autoaugment`), random erasing (`erasing`), then mixup / cutmix
(`mixing`), in torchvision's and timm's order. Each is a pure function of a
key the step derives from the run's seed and the step, so a resumed run draws
what the uninterrupted one would have, on every pipeline, with no CPU worker.

`batch_transform(config, num_classes)` composes those the config turns on into
one ``transform(key, images, labels, hp) -> (images, targets)``: uint8 images
in, float32 images out, and soft targets [B, C] (mixing smooths then mixes the
labels, as timm does) or the labels themselves when nothing mixes. Their scalars
may come from `hp`, a population member's own values (which ones a population
may sweep: `resnet_jax.training.population.SWEEPABLE`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax.augment import autoaugment, erasing, mixing
from resnet_jax.errors import ConfigError

Transform = Callable[[jax.Array, jax.Array, jax.Array, dict[str, Any]], tuple[jax.Array, jax.Array]]
AUTO_AUGMENTS = ("", "trivial", "rand")
INTERPOLATIONS = ("nearest", "bilinear")  # auto_augment_interpolation


def check(config: ml_collections.ConfigDict, swept: Collection[str] = ()) -> None:
    """Raises `ConfigError` for a batch-augmentation field of `config` that
    cannot work: an unknown name, or a ``mixup_chunk`` that does not divide the
    batch when mixing is on (or swept: the fields in `swept`)."""
    if config.auto_augment not in AUTO_AUGMENTS:
        raise ConfigError(f"unknown auto_augment {config.auto_augment!r}; use 'trivial', 'rand' or ''")
    chunk = config.mixup_chunk
    if _mixes(config, swept) and chunk and (chunk < 0 or config.batch_size % chunk):
        raise ConfigError(f"mixup_chunk={chunk} must divide batch_size={config.batch_size} (0: one draw a batch)")
    if config.mixup_style not in mixing.STYLES:
        raise ConfigError(f"unknown mixup_style {config.mixup_style!r}; use {' or '.join(mixing.STYLES)}")
    if config.auto_augment_interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown auto_augment_interpolation {config.auto_augment_interpolation!r}; "
                          f"use {' or '.join(repr(i) for i in INTERPOLATIONS)}")  # fmt: skip
    if config.get("auto_augment_shear", "corner") not in autoaugment.SHEAR_PIVOTS:
        raise ConfigError(f"unknown auto_augment_shear {config.auto_augment_shear!r}; "
                          f"use {' or '.join(repr(p) for p in autoaugment.SHEAR_PIVOTS)}")  # fmt: skip


def _on(config: ml_collections.ConfigDict, swept: Collection[str], field: str) -> bool:
    return field in swept or config[field] > 0


def _mixes(config: ml_collections.ConfigDict, swept: Collection[str]) -> bool:
    return _on(config, swept, "mixup_alpha") or _on(config, swept, "cutmix_alpha")


def batch_transform(
    config: ml_collections.ConfigDict, num_classes: int, swept: Collection[str] = (), chunk: int | None = None
) -> Transform | None:
    """The batch augmentations `config` turns on (or a population sweeps: the
    fields in `swept`), composed; None when none is. `chunk`: images per
    mixing draw (the batch layout's, `resnet_jax.batch_layout`; default
    ``config.mixup_chunk``)."""
    check(config, swept)
    mixes = _mixes(config, swept)
    erases = _on(config, swept, "random_erasing")
    if not (config.auto_augment or erases or mixes):
        return None
    chunk = config.mixup_chunk if chunk is None else chunk
    style, interpolation = config.mixup_style, config.auto_augment_interpolation
    shear = config.get("auto_augment_shear", "corner")
    mean_pixel = tuple(255 * m for m in config.data.mean)  # erased to 0 once normalised, as torchvision's V2
    fill = tuple(round(v) for v in mean_pixel)  # timm's RandAugment fills with the rounded mean

    def transform(key: jax.Array, images: jax.Array, labels: jax.Array, hp: dict[str, Any]) -> tuple[Any, Any]:
        value = lambda field: hp.get(field, config[field])  # noqa: E731
        k_auto, k_erase, k_mix = jax.random.split(key, 3)
        if config.auto_augment == "trivial":
            images = autoaugment.trivial_augment_wide(k_auto, images, interpolation=interpolation, shear=shear)
        elif config.auto_augment == "rand":
            images = autoaugment.rand_augment(
                k_auto, images, value("randaugment_magnitude"), config.randaugment_std, config.randaugment_layers,
                fill=fill,
            )
        images = images.astype(jnp.float32)
        if erases:
            images = erasing.random_erasing(k_erase, images, value("random_erasing"), value=mean_pixel)
        if not mixes:
            return images, labels
        return mixing.mix_batch(
            k_mix, images, labels, num_classes, mixup_alpha=value("mixup_alpha"), cutmix_alpha=value("cutmix_alpha"),
            switch_prob=value("mixup_switch_prob"), prob=value("mixup_prob"), smoothing=hp["label_smoothing"],
            chunk=chunk, style=style,
        )  # fmt: skip

    return transform
