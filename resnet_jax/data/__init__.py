"""Input pipelines.

* `folder`: image folders laid out ``root/<split>/<class>/<file>`` (Pillow).
* `tfds`: tf.data pipelines over TFDS datasets and image folders (imports
  TensorFlow: it is imported only when a config asks for it).
* `device`: whole small datasets kept on the device, augmented inside `jit`.
* `augment`: the augmentations, as TensorFlow ops and as JAX ops.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from jax.sharding import Mesh


def make_pipeline(config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """The pipeline `config.data.pipeline` names: "tfds" (tf.data) or "device"."""
    cfg = config.data
    if cfg.pipeline == "tfds":
        from resnet_jax.data.tfds import TFDataPipeline

        return TFDataPipeline(cfg, config.batch_size, config.eval_batch_size, config.seed, mesh)
    if cfg.pipeline == "device":
        from resnet_jax.data.device import DevicePipeline

        train, evaluation, names = _load_arrays(cfg)
        return DevicePipeline(
            train, evaluation, names, config.batch_size, config.eval_batch_size, config.seed, mesh,
            crop_padding=cfg.crop_padding, augment_images=cfg.augment == "cifar",
        )
    raise ValueError(f"unknown data.pipeline {cfg.pipeline!r}; use 'tfds' or 'device'")


def _load_arrays(cfg: ml_collections.ConfigDict) -> Any:
    """Whole splits as uint8 arrays: image folders through Pillow, TFDS names through TFDS."""
    size = (cfg.image_size, cfg.image_size)
    if cfg.path:
        from resnet_jax.data import folder

        train = folder.list_split(cfg.path, cfg.train_split)
        test = folder.list_split(cfg.path, cfg.eval_split, train.class_names)
        skip = cfg.skip_bad_images
        return folder.load_arrays(train, size, skip), folder.load_arrays(test, size, skip), train.class_names
    from resnet_jax.data.tfds import load_arrays

    *train, names = load_arrays(cfg, cfg.train_split)
    *test, _ = load_arrays(cfg, cfg.eval_split)
    return tuple(train), tuple(test), names
