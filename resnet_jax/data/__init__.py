"""Input pipelines.

* `folder`: image folders laid out ``root/<split>/<class>/<file>`` (Pillow).
* `tfds`: tf.data pipelines over TFDS datasets and image folders (imports
  TensorFlow: it is imported only when a config asks for it).
* `grain`: Grain pipelines over image folders and TFDS datasets prepared as
  ArrayRecord files (no TensorFlow; decoding in worker processes).
* `device`: whole small datasets kept on the device, augmented inside `jit`.
* `augment`: the pipelines' crops and flips, as TensorFlow, NumPy/Pillow and JAX ops.

The batch augmentations that run inside the train step (RandAugment, mixup,
...) are traced code, not a pipeline: `resnet_jax.augment`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from resnet_jax.data import augment, repeated, resolution
from resnet_jax.data.pipeline import Pipeline
from resnet_jax.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from resnet_jax.batch_layout import BatchLayout

PIPELINES = ("tfds", "grain", "device")
AUGMENTS = ("cifar", "inception", "none")  # data.augment: pad + crop + flip | random-resized crop + flip | none


def make_pipeline(
    config: ml_collections.ConfigDict, mesh: Mesh, seeds: list[int] | None = None, layout: BatchLayout | None = None
) -> Pipeline:
    """The pipeline `config.data.pipeline` names: "tfds" (tf.data), "grain" or "device".

    `seeds`: the data seed of each population member (the on-device pipeline
    draws each one's batches; default ``[config.seed]``); the host pipelines
    serve one stream of ``config.seed``, shared by members of that seed.
    `layout`: where each position of a batch reads (the copies of repeated
    augmentation dealt to the source's devices: `resnet_jax.batch_layout`;
    default: `config`'s)."""
    check(config)
    if layout is None:
        from resnet_jax.batch_layout import from_config

        layout = from_config(config, jax.process_count())
    cfg = config.data
    if cfg.pipeline == "tfds":
        from resnet_jax.data.tfds import TFDataPipeline

        return TFDataPipeline(cfg, config.batch_size, config.eval_batch_size, config.seed, mesh, layout.order())
    if cfg.pipeline == "grain":
        try:
            from resnet_jax.data.grain import GrainPipeline
        except ModuleNotFoundError as e:
            if e.name != "grain":
                raise
            raise MissingDependencyError(
                "data.pipeline='grain' needs the grain package: pip install 'resnet-jax-flax[grain]'"
            ) from None
        return GrainPipeline(cfg, config.batch_size, config.eval_batch_size, config.seed, mesh, order=layout.order())
    from resnet_jax.data.device import DevicePipeline  # "device", the last of `PIPELINES`

    train, evaluation, names = _load_arrays(cfg)
    return DevicePipeline(
        train, evaluation, names, config.batch_size, config.eval_batch_size,
        [config.seed] if seeds is None else seeds, mesh,
        crop_padding=cfg.crop_padding, augment_images=cfg.augment == "cifar",
        copies=layout.copies, order=layout.order(whole=True),
    )


def check(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` for a field of ``config.data`` that cannot work,
    before any data is read: an unknown pipeline, augmentation or resampling
    filter, a training-size schedule (`resolution.train_sizes`) or repetition
    (`repeated.repeats`) that is malformed or that the pipeline lacks."""
    cfg = config.data
    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"unknown data.pipeline {cfg.pipeline!r}; use {', '.join(repr(p) for p in PIPELINES)}")
    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"unknown data.augment {cfg.augment!r}; use {', '.join(repr(a) for a in AUGMENTS)}")
    augment.resize_method(cfg.interpolation)
    augment.crop_sampler(cfg.get("crop_sampler", "torchvision"), cfg.pipeline if cfg.augment == "inception" else "tfds")
    resolution.train_sizes(cfg)
    repeated.repeats(cfg)
    if cfg.pipeline == "device":
        host_only = {"train_image_size": 0, "progressive_resizing": ""}
        for field, off in host_only.items():
            if cfg[field] != off:
                raise ConfigError(f"data.{field} is for the random-resized crops of the tfds and grain pipelines; "
                                  "data.pipeline='device' has one image size and no sampler")  # fmt: skip


def load_split_arrays(cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One whole split of ``config.data`` as (uint8 images, int32 labels, class names):
    an image folder through Pillow (labels by the training split's classes),
    a TFDS name through TFDS."""
    if cfg.path:
        from resnet_jax.data import folder

        names = tuple(folder.list_classes(cfg.path, cfg.train_split))
        files = folder.list_split(cfg.path, split, names)
        images, labels = folder.load_arrays(files, (cfg.image_size, cfg.image_size), cfg.skip_bad_images)
        return images, labels, names
    from resnet_jax.data.tfds import load_arrays

    return load_arrays(cfg, split)


def _load_arrays(cfg: ml_collections.ConfigDict) -> Any:
    """The training and evaluation splits, for the on-device pipeline."""
    *train, names = load_split_arrays(cfg, cfg.train_split)
    *test, _ = load_split_arrays(cfg, cfg.eval_split)
    return tuple(train), tuple(test), names
