"""tf.data input pipelines over TFDS datasets and image folders.

A source is either a TFDS dataset by name (``cifar10``, ``imagenet2012``, ...,
prepared under ``data_dir``) or an image folder ``root/<split>/<class>/<file>``
read through TFDS's folder builder (`tfds.ImageFolder`). Images are read
encoded and decoded here (any format, converted to RGB), so that JPEGs can be
decoded only inside their crop window.

Determinism: the order of epoch ``e`` depends only on (seed, e), and each
example's augmentation on (seed, e, position), so a run restarted at step ``k``
of an epoch sees exactly the batches the uninterrupted run would have seen.

Options of today's ImageNet recipes: training crops of epoch ``e`` are
``resolution.train_resolution(e)`` pixels (FixRes's ``train_image_size``, FFCV's
``progressive_resizing``) while evaluation stays at ``image_size``; with
``repeated_augmentations`` r > 1 (`resnet_jax.data.repeated`), each epoch draws
``ceil(length / r)`` examples of the share from (seed, e), shuffles them and
repeats each r times in a row, every copy augmented with its own position's seed.

This module imports TensorFlow; the rest of the package does not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data import augment, folder, repeated, resolution
from resnet_jax.data.pipeline import Batch, DataInfo, check_class_names, padded_eval_batches
from resnet_jax.errors import DatasetError

# Keep TensorFlow off accelerators: JAX owns them.
tf.config.set_visible_devices([], "GPU")

AUTOTUNE = tf.data.AUTOTUNE


def _builder(cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    if cfg.path:
        path = os.path.expanduser(cfg.path)
        # Names what is missing, an empty class folder, or an eval class that training lacks (TFDS's
        # ImageFolder would take the union of the splits' classes: an output that never trains).
        folder.list_split(path, cfg.eval_split, folder.list_split(path, cfg.train_split).class_names)
        return tfds.ImageFolder(path)
    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(f"unknown TFDS dataset {cfg.name!r}: {str(e).splitlines()[0]}") from None
    return builder


def _as_dataset(builder: tfds.core.DatasetBuilder, split: str, **kwargs: Any) -> tf.data.Dataset:
    """`builder.as_dataset` reading encoded images, with a clear error when the
    dataset was never prepared (no internet: TFDS cannot download it here)."""
    try:
        return builder.as_dataset(
            split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False, **kwargs
        )
    except (AssertionError, FileNotFoundError) as e:
        raise DatasetError(
            f"TFDS dataset {builder.name!r} is not prepared in {builder.data_dir!r} ({e}); run "
            f"`tfds build {builder.name} --data_dir=...` first, or set config.data.path to an image folder"
        ) from None


class TFDataPipeline:
    """Training and evaluation batches (numpy, this process's share) from tf.data."""

    def __init__(
        self, cfg: ml_collections.ConfigDict, batch_size: int, eval_batch_size: int, seed: int, mesh: Mesh,
        order: np.ndarray | None = None,
    ):
        """
        Args:
          cfg: the ``config.data`` block (see resnet_jax/config.py).
          batch_size, eval_batch_size: global batch sizes (all processes).
          seed: data seed: shuffling and augmentation.
          mesh: the device mesh batches are sharded over.
          order: position i of this process's batch holds position ``order[i]``
            of its run of the epoch's stream (`resnet_jax.batch_layout`: the
            copies of repeated augmentation dealt to the source's devices); None: in turn.
        """
        self.cfg, self.mesh = cfg, mesh
        self.order = order
        self.seed = seed
        self.train_sizes = resolution.train_sizes(cfg)  # checks the options before any file is read
        augment.resize_method(cfg.get("interpolation", "bicubic"))
        self.repeats = repeated.repeats(cfg)
        self.batch_size = batch_size // jax.process_count()
        self.eval_batch_size = eval_batch_size // jax.process_count()
        self.builder = _builder(cfg)
        splits = self.builder.info.splits
        for split in (cfg.train_split, cfg.eval_split):
            if splits and split.split("[")[0] not in splits:
                raise DatasetError(f"dataset has no split {split!r}; it has {sorted(splits)}")
        self._bad_files = self._verify_folder() if cfg.path else frozenset()
        self._train = self._encoded(cfg.train_split)
        self._local_train = self._count(self._train)  # this process's share, perhaps larger than the smallest
        train_counts = parallel.gather_from_processes(self._local_train)
        self._eval_counts = parallel.gather_from_processes(self._count(self._encoded(cfg.eval_split)))
        # Every process must run as many steps: the smallest shard sets the epoch length.
        self._num_local_train = int(train_counts.min())
        self.info = DataInfo(
            class_names=check_class_names(self.builder.info.features["label"].names),
            num_train=int(train_counts.sum()),
            num_eval=int(self._eval_counts.sum()),
            image_size=cfg.image_size,
        )
        if cfg.cache and cfg.augment == "inception":  # crops are cut from the encoded file: cache that
            self._train = self._train.cache()
        elif cfg.cache:
            size = (cfg.image_size, cfg.image_size)
            self._train = self._train.map(lambda x, y: (augment.tf_decode(x, size), y), AUTOTUNE).cache()

    def _verify_folder(self) -> frozenset[str]:
        """Decodes every file of a folder once before training, so that bad files are
        named now (or skipped, if configured); returns the skipped paths."""
        bad = set()
        if self.cfg.verify_images:
            for split in (self.cfg.train_split, self.cfg.eval_split):
                listed = folder.list_split(self.cfg.path, split)
                checked = folder.verify(listed, skip_bad=self.cfg.skip_bad_images)
                bad |= set(listed.paths) - set(checked.paths)
        return frozenset(bad)

    def _encoded(self, split: str) -> tf.data.Dataset:
        """(encoded image, label) of this process's shard of `split`, in a fixed order."""
        if self.cfg.path:
            ds = _as_dataset(self.builder, split)
            if self._bad_files:
                bad_t = tf.constant(sorted(self._bad_files))
                ds = ds.filter(lambda ex: ~tf.reduce_any(tf.equal(ex["image/filename"], bad_t)))
            ds = ds.shard(jax.process_count(), jax.process_index())
        else:
            ds = _as_dataset(
                self.builder, tfds.split_for_jax_process(split), read_config=tfds.ReadConfig(interleave_cycle_length=1)
            )
        return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)), AUTOTUNE)

    @staticmethod
    def _count(ds: tf.data.Dataset) -> int:
        n = int(ds.cardinality())
        if n < 0:
            n = int(ds.reduce(0, lambda c, _: c + 1))
        return n

    @property
    def steps_per_epoch(self) -> int:
        """Full training batches per epoch (the last partial batch is dropped)."""
        return self._num_local_train // self.batch_size

    def train_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This process's training batches of `epoch`, from batch `start_step` on, with
        crops of ``train_resolution(epoch)`` pixels."""
        cfg, size = self.cfg, self.train_sizes.at(epoch)
        epoch_seed = np.random.SeedSequence([self.seed, epoch]).generate_state(3)  # shuffle, crops, selection
        length = self.steps_per_epoch * self.batch_size
        if self.repeats == 1:
            ds = self._train.shuffle(
                cfg.shuffle_buffer or self._num_local_train, seed=int(epoch_seed[0]), reshuffle_each_iteration=False
            )
        else:
            ds = self._repeated(length, int(epoch_seed[0]), int(epoch_seed[2]))
        ds = ds.take(length).enumerate().skip(start_step * self.batch_size)
        base_seed = tf.constant([int(epoch_seed[1]) % 2**31, 0], tf.int64)
        interpolation, sampler = cfg.get("interpolation", "bicubic"), cfg.get("crop_sampler", "torchvision")

        def preprocess(i: Any, example: tuple[Any, Any]) -> tuple[Any, Any]:
            image, label = example
            seed = base_seed + tf.stack([tf.constant(0, tf.int64), i])
            if cfg.augment == "cifar":
                if not cfg.cache:
                    image = augment.tf_decode(image, (size, size))
                image = augment.tf_crop_flip(image, seed, pad=cfg.crop_padding)
            elif cfg.augment == "inception":
                image = augment.tf_inception_crop(image, seed, size, interpolation=interpolation, sampler=sampler)
            elif not cfg.cache:
                image = augment.tf_decode(image, (size, size))
            return image, label

        ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(self.batch_size, drop_remainder=True)
        if self.order is not None:
            order = tf.constant(self.order)
            ds = ds.map(lambda image, label: (tf.gather(image, order), tf.gather(label, order)), AUTOTUNE)
        ds = ds.prefetch(cfg.prefetch)
        for image, label in ds.as_numpy_iterator():
            yield {"image": image, "label": label}

    def _repeated(self, length: int, shuffle_seed: int, select_seed: int) -> tf.data.Dataset:
        """An epoch of repeated augmentation: ``ceil(length / r)`` examples of the share drawn
        with `select_seed` (from all of it, whatever ``shuffle_buffer``), shuffled, each r times
        in a row (`resnet_jax.data.repeated`)."""
        r, selected = self.repeats, repeated.num_selected(length, self.repeats)
        keep = np.zeros(self._local_train, bool)
        keep[np.random.default_rng(select_seed).permutation(self._local_train)[:selected]] = True
        keep_t = tf.constant(keep)
        ds = self._train.enumerate().filter(lambda i, _: keep_t[i]).map(lambda _, example: example)
        ds = ds.shuffle(self.cfg.shuffle_buffer or selected, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds.flat_map(lambda image, label: tf.data.Dataset.from_tensors((image, label)).repeat(r))

    def eval_batches(self) -> Iterator[Batch]:
        """This process's share of every evaluation example once, padded and masked."""
        cfg, size = self.cfg, self.cfg.image_size
        if cfg.augment == "inception":

            def decode(x):
                return augment.tf_center_crop(x, size, cfg.crop_fraction, cfg.get("interpolation", "bicubic"))
        else:

            def decode(x):
                return augment.tf_decode(x, (size, size))

        ds = self._encoded(cfg.eval_split).map(lambda x, y: (decode(x), y), AUTOTUNE)
        ds = ds.batch(self.eval_batch_size).prefetch(cfg.prefetch)
        batches = ({"image": image, "label": label} for image, label in ds.as_numpy_iterator())
        yield from padded_eval_batches(batches, self.num_eval_batches, self.eval_batch_size, (size, size, 3))

    @property
    def num_eval_batches(self) -> int:
        """Batches per process: the same on every process (the largest shard's)."""
        return -(-int(self._eval_counts.max()) // self.eval_batch_size)


def load_arrays(cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decodes a whole split of a TFDS dataset into uint8 arrays (for the on-device pipeline)."""
    builder = _builder(cfg)
    ds = _as_dataset(builder, split)
    size = (cfg.image_size, cfg.image_size)
    ds = ds.map(lambda ex: (augment.tf_decode(ex["image"], size), ex["label"]), AUTOTUNE).batch(4096)
    images, labels = zip(*ds.as_numpy_iterator())
    names = check_class_names(builder.info.features["label"].names)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32), names

