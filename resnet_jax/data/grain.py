"""Grain input pipelines over image folders and TFDS datasets prepared as
ArrayRecord files: no TensorFlow at run time, decoding in worker processes,
resumable at any step.

Sources: an image folder ``root/<split>/<class>/<file>`` (listed and checked as
`folder` does, decoded with Pillow), or a TFDS dataset by name read through
`tfds.data_source` (``data.name``, ``data.data_dir``; prepared beforehand with
``tfds build <name> --file_format=array_record``). Images are decoded, cropped
and flipped in ``data.workers`` processes (`grain.MultiprocessingOptions`;
-1: one per CPU core less one, for the training loop).

Transforms are the tf.data path's (tfds.py, augment.py): ``augment="inception"``
is the random-resized crop (area 8-100%, aspect 3/4-4/3) + flip for training and
the resize-to-``image_size / crop_fraction`` + central crop for evaluation;
``"cifar"`` is the zero-pad by ``crop_padding``, random crop and flip; other
images are resized to ``image_size`` if needed. Where they differ from tf.data:

- the crop window is always torchvision's RandomResizedCrop's (`augment.crop_window`,
  as tf.data's with ``data.crop_sampler="torchvision"``; the "tf" sampler is tf.data's only);
- a JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps the
  crop window at least ``image_size`` pixels (`augment.decode_box`), then resized
  with ``data.interpolation`` (bicubic by default), antialiased; tf.data decodes the window at full scale;
- every epoch shuffles the whole share (``shuffle_buffer`` and ``cache`` are not
  used).

Order and randomness: training batch ``k`` (counted from the run's first step)
is a function of (seed, k) only. Epoch ``e = k // steps_per_epoch`` reads this
process's share in the order of a permutation drawn from (seed, e, share); each
example's crop and flip come from a generator seeded by (seed, e, share, its
position in the epoch); the number of workers changes no batch. With
``repeated_augmentations`` r > 1, position p reads the (p // r)-th example of the
order: r copies, each augmented with its own draw, of the epoch's first
examples (`resnet_jax.data.repeated`). Training crops of epoch ``e`` are
``resolution.train_resolution(e)`` pixels (FixRes's ``train_image_size`` or
FFCV's ``progressive_resizing``); evaluation stays at ``image_size``. The training
stream is one Grain iterator (`TrainIterator`) that runs on across epochs; the
trainer saves its state with every checkpoint (Grain's Orbax handler) and
restores it on resume, so a run killed mid-epoch continues with exactly the
batches the uninterrupted run sees.

Bad files: a folder is checked before training when ``verify_images`` is set
(unreadable files named, or dropped with ``skip_bad_images``). A file met
unreadable during a run (an unchecked folder, a TFDS record) stops it, named,
or with ``skip_bad_images`` is replaced by the next readable example of the
epoch's order (training: batches keep their size and order) or masked out
(evaluation: it is not counted).

Multi-host: each process reads every n-th example (`grain.sharding.ShardByJaxProcess`);
training shares are cut to one size so that all processes run as many steps.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh

from resnet_jax.data import augment, folder, repeated, resolution
from resnet_jax.data.pipeline import Batch, DataInfo, check_class_names, padded_eval_batches
from resnet_jax.errors import DatasetError

_ENDLESS = 2**62  # examples in the training stream: it runs until the trainer stops reading
_ORDER, _EXAMPLE = 0, 1  # tags keeping the seeds of epoch orders and of examples apart
_PARENT_POLL_S = 0.5  # how often a worker checks that the process that started it still runs


def default_workers() -> int:
    """One worker process per CPU core this process may use, less one for the training loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass(frozen=True)
class FolderRecords:
    """The files of an image-folder split: ``(file, label, name)`` by index."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> tuple[Any, int, str]:
        return self.paths[k], int(self.labels[k]), self.paths[k]


@dataclass(frozen=True)
class TfdsRecords:
    """A TFDS split read from its ArrayRecord files, images still encoded."""

    source: Any  # tfds.data_source(...) with the image left undecoded
    name: str  # "<dataset>/<split>", to name a bad record

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> tuple[Any, int, str]:
        record = self.source[k]
        return io.BytesIO(record["image"]), int(record["label"]), f"{self.name} record {k}"


@dataclass(frozen=True)
class Share:
    """One process's examples of `records`: every ``shard_count``-th from
    ``shard_index`` (a `grain.sharding.ShardOptions`); with ``drop_remainder``
    every share has ``len(records) // shard_count``."""

    records: FolderRecords | TfdsRecords
    options: grain.sharding.ShardOptions

    def __len__(self) -> int:
        n, count = len(self.records), self.options.shard_count
        return n // count if self.options.drop_remainder else len(range(self.options.shard_index, n, count))

    def __getitem__(self, k: int) -> tuple[Any, int, str]:
        return self.records[self.options.shard_index + k * self.options.shard_count]


@dataclass(frozen=True)
class Decoder:
    """Decodes one image file into ``size`` x ``size`` RGB uint8, augmented when
    given a generator (training) and cropped for evaluation otherwise."""

    size: int
    augment: str  # inception | cifar | none
    crop_padding: int
    crop_fraction: float
    interpolation: str = "bicubic"  # of the inception crops and the eval resize

    def __call__(self, file: Any, name: str, rng: np.random.Generator | None, crop_size: int = 0) -> np.ndarray:
        """`crop_size` (> 0): the size of a training crop, instead of ``size`` (`resolution`)."""
        if self.augment == "inception":
            with folder.open_image(file, name) as image:
                if rng is None:
                    return augment.pil_center_crop(image, self.size, self.crop_fraction, self.interpolation)
                return augment.pil_inception_crop(image, rng, crop_size or self.size, interpolation=self.interpolation)
        image = folder.load_rgb(file, (self.size, self.size), name)
        if self.augment == "cifar" and rng is not None:
            return augment.np_crop_flip(image, rng, self.crop_padding)
        return image


@dataclass
class TrainExamples:
    """Example ``i`` of the training stream, decoded and augmented: position
    ``i % epoch_length`` of epoch ``i // epoch_length``, which reads example
    ``order(epoch)[position // repeats]`` of the share (`repeated`) and crops it
    to ``sizes.at(epoch)`` (`resolution`). Runs in the workers."""

    share: Share
    decoder: Decoder
    epoch_length: int  # steps_per_epoch * batch size: the rest of the share serves as stand-ins
    seed: int
    skip_bad: bool
    sizes: resolution.TrainSizes | None = None  # None: the decoder's size in every epoch
    repeats: int = 1  # copies of each example in an epoch (repeated augmentation)
    # position i of a batch reads position deal[i] of its run of the stream (`resnet_jax.batch_layout`); None: i
    deal: np.ndarray | None = None
    _order: tuple[int, np.ndarray] | None = field(default=None, repr=False)

    def order(self, epoch: int) -> np.ndarray:
        """The share's order in `epoch` (the latest epoch's is cached)."""
        if self._order is None or self._order[0] != epoch:
            seed = [self.seed, _ORDER, epoch, self.share.options.shard_index]
            self._order = (epoch, np.random.default_rng(seed).permutation(len(self.share)))
        return self._order[1]

    def __call__(self, i: int) -> Batch:
        epoch, position = divmod(int(i), self.epoch_length)
        order = self.order(epoch)
        rng = np.random.default_rng([self.seed, _EXAMPLE, epoch, self.share.options.shard_index, position])
        crop_size = 0 if self.sizes is None else self.sizes.at(epoch)
        if self.deal is not None:
            start, slot = divmod(position, len(self.deal))
            position = start * len(self.deal) + int(self.deal[slot])
        selected = position // self.repeats
        for attempt in range(len(order)):  # an unreadable file's stand-in: the next example of the order
            file, label, name = self.share[int(order[(selected + attempt) % len(order)])]
            try:
                return {"image": self.decoder(file, name, rng, crop_size), "label": np.int32(label)}
            except folder.BadImageError as e:
                if not self.skip_bad:
                    raise _named(e) from None
                print(f"Skipping an unreadable image in training: {e}", file=sys.stderr)
        raise DatasetError(f"no readable image among the {len(order)} of this process's training share")


@dataclass(frozen=True)
class EvalExamples:
    """Evaluation example ``k`` of a share, with ``mask`` 0 if it was unreadable and skipped."""

    share: Share
    decoder: Decoder
    skip_bad: bool

    def __call__(self, k: int) -> Batch:
        file, label, name = self.share[int(k)]
        try:
            image, mask = self.decoder(file, name, None), 1.0
        except folder.BadImageError as e:
            if not self.skip_bad:
                raise _named(e) from None
            print(f"Skipping an unreadable image in evaluation: {e}", file=sys.stderr)
            image, mask = np.zeros((self.decoder.size, self.decoder.size, 3), np.uint8), 0.0
        return {"image": image, "label": np.int32(label), "mask": np.float32(mask)}


def _named(error: folder.BadImageError) -> folder.BadImageError:
    return folder.BadImageError(f"{error} (set config.data.skip_bad_images=True to skip unreadable images)")


class TrainIterator(grain.DatasetIterator):
    """The training batches from a position on (batch ``k`` feeds step ``k`` of the
    run). Its state, saved in checkpoints by `grain.checkpoint.CheckpointHandler`,
    is the position and the state of Grain's iterator over the workers."""

    def __init__(self, batches: Callable[[int], grain.IterDataset], workers: int):
        """
        Args:
          batches: ``batches(k)``: the stream from batch `k` on.
          workers: the worker processes `batches` runs on (a saved Grain state
            fits only the same number).
        """
        super().__init__()
        self._batches, self._workers = batches, workers
        self._start = self.position = 0
        self._iterator: grain.DatasetIterator | None = None

    def seek(self, position: int) -> None:
        """Goes on from batch `position`: with the running iterator if it is there."""
        if self._iterator is None or position != self.position:
            self._restart(position)

    def _restart(self, start: int) -> None:
        self.close()
        self._start = self.position = start
        self._iterator = iter(self._batches(start))

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._restart(self.position)
        batch = next(self._iterator)
        self.position += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        grain_state = None if self._iterator is None else self._iterator.get_state()
        return {"start": self._start, "position": self.position, "workers": self._workers, "grain": grain_state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a saved state (with Grain's state where the worker count is the same)."""
        self.close()
        if state["grain"] is not None and state["workers"] == self._workers:
            self._restart(state["start"])
            self._iterator.set_state(state["grain"])
        self.position = state["position"]

    def start_prefetch(self) -> None:
        if self._iterator is not None:
            self._iterator.start_prefetch()

    def close(self) -> None:
        """Stops the worker processes."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None


def _exit_with_parent(parent: int, worker: int = 0, count: int = 1) -> None:
    """Ends this process (a Grain worker; `worker` of `count`) soon after `parent` is gone.

    Grain's workers are daemonic `multiprocessing` processes: a trainer that exits stops them, but one
    killed with SIGKILL (a preemption, the OOM killer) cannot, and they ran on with parent 1, each
    holding its memory, and kept multiprocessing's resource tracker alive (it exits at EOF of a pipe
    the workers hold too). A daemon thread polls the parent's pid every `_PARENT_POLL_S` seconds and
    calls `os._exit` once this process has been reparented, whatever its main thread is doing; the
    tracker then sees EOF, unlinks the shared memory left behind and exits. prctl(PR_SET_PDEATHSIG)
    is not used: it fires when the *thread* that started the worker ends, and Grain starts workers
    from a thread pool. Where a parent's death does not change the pid seen (Windows) this does nothing.
    """
    del worker, count  # Grain's worker_init_fn arguments

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _in_workers(ds: grain.MapDataset, workers: int, prefetch: int) -> grain.IterDataset:
    """`ds` computed element by element in `workers` processes (0: in a thread of this one),
    which exit when this process is gone, however it ended (`_exit_with_parent`)."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if workers == 0:
        return it
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
    return it.mp_prefetch(options, worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))


def _training_stream(
    examples: TrainExamples, batch_size: int, workers: int, prefetch: int, start: int
) -> grain.IterDataset:
    """The training batches from batch `start` on."""
    batches = grain.MapDataset.range(_ENDLESS).map(examples).batch(batch_size, drop_remainder=True)
    return _in_workers(batches[start:], workers, prefetch)


def _folder_records(cfg: ml_collections.ConfigDict) -> tuple[FolderRecords, FolderRecords, list[str]]:
    names = folder.list_classes(cfg.path, cfg.train_split)
    splits = []
    for split in (cfg.train_split, cfg.eval_split):
        listed = folder.list_split(cfg.path, split, names)
        if cfg.verify_images:
            listed = folder.verify(listed, skip_bad=cfg.skip_bad_images)
        splits.append(FolderRecords(listed.paths, listed.labels))
    return splits[0], splits[1], names


def _tfds_records(cfg: ml_collections.ConfigDict) -> tuple[TfdsRecords, TfdsRecords, list[str]]:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(f"unknown TFDS dataset {cfg.name!r}: {str(e).splitlines()[0]}") from None
    splits = builder.info.splits
    prepare = (
        f"prepare it with `tfds build {cfg.name} --file_format=array_record --data_dir=...`, "
        "or use data.pipeline='tfds' (tf.data) or an image folder (data.path)"
    )
    if not splits:
        raise DatasetError(f"TFDS dataset {cfg.name!r} is not prepared in {builder.data_dir!r}; {prepare}")
    records = []
    for split in (cfg.train_split, cfg.eval_split):
        if split.split("[")[0] not in splits:
            raise DatasetError(f"dataset has no split {split!r}; it has {sorted(splits)}")
        try:
            source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        except (NotImplementedError, ValueError):
            stored = getattr(builder.info.file_format, "value", builder.info.file_format)
            where = f"TFDS dataset {cfg.name!r} in {builder.data_dir!r}"
            raise DatasetError(f"{where} is stored as {stored} files, not ArrayRecord; {prepare}") from None
        records.append(TfdsRecords(source, f"{cfg.name}/{split}"))
    return records[0], records[1], builder.info.features["label"].names


class GrainPipeline:
    """Training and evaluation batches (numpy, this process's share) from Grain."""

    def __init__(
        self,
        cfg: ml_collections.ConfigDict,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        mesh: Mesh,
        shard: grain.sharding.ShardOptions | None = None,
        order: np.ndarray | None = None,
    ):
        """
        Args:
          cfg: the ``config.data`` block (see resnet_jax/config.py).
          batch_size, eval_batch_size: global batch sizes (all processes).
          seed: data seed: order and augmentation.
          mesh: the device mesh batches are sharded over.
          shard: this process's share (default: `grain.sharding.ShardByJaxProcess`).
          order: position i of this process's batch holds position ``order[i]``
            of its run of the epoch's stream (`resnet_jax.batch_layout`: the
            copies of repeated augmentation dealt to the source's devices); None: in turn.
        """
        if not flags.FLAGS.is_parsed():  # grain 0.2 reads an absl flag when it starts a worker
            flags.FLAGS.mark_as_parsed()
        self.cfg, self.mesh = cfg, mesh
        self.train_sizes = resolution.train_sizes(cfg)  # checks the options before any file is read
        augment.resize_method(cfg.get("interpolation", "bicubic"))
        repeats = repeated.repeats(cfg)
        self.batch_size = batch_size // jax.process_count()
        self.eval_batch_size = eval_batch_size // jax.process_count()
        self.workers = default_workers() if cfg.workers < 0 else cfg.workers
        train, evaluation, names = _folder_records(cfg) if cfg.path else _tfds_records(cfg)
        shard = shard or grain.sharding.ShardByJaxProcess()
        index, count = shard.shard_index, shard.shard_count
        self._train = Share(train, grain.sharding.ShardOptions(index, count, drop_remainder=True))
        self._eval = Share(evaluation, grain.sharding.ShardOptions(index, count, drop_remainder=False))
        self.info = DataInfo(check_class_names(names), len(train), len(evaluation), cfg.image_size)
        largest_share = -(-len(evaluation) // count)  # every process runs as many evaluation steps
        self.num_eval_batches = -(-largest_share // self.eval_batch_size)
        decoder = Decoder(
            cfg.image_size, cfg.augment, cfg.crop_padding, cfg.crop_fraction, cfg.get("interpolation", "bicubic")
        )
        length = self.steps_per_epoch * self.batch_size
        train_examples = TrainExamples(
            self._train, decoder, max(length, 1), seed, cfg.skip_bad_images, self.train_sizes, repeats, order
        )
        self._eval_examples = EvalExamples(self._eval, decoder, cfg.skip_bad_images)
        stream = functools.partial(_training_stream, train_examples, self.batch_size, self.workers, cfg.prefetch)
        self.data_iterator = TrainIterator(stream, self.workers)

    @property
    def steps_per_epoch(self) -> int:
        """Full training batches per epoch (the rest of the share is not trained on in that epoch)."""
        return len(self._train) // self.batch_size

    def train_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This process's training batches of `epoch`, from batch `start_step` on."""
        self.data_iterator.seek(epoch * self.steps_per_epoch + start_step)
        for _ in range(start_step, self.steps_per_epoch):
            yield next(self.data_iterator)

    def eval_batches(self) -> Iterator[Batch]:
        """This process's share of every evaluation example once, padded and masked."""
        examples = grain.MapDataset.range(len(self._eval)).map(self._eval_examples)
        batches = iter(_in_workers(examples.batch(self.eval_batch_size), self.workers, self.cfg.prefetch))
        try:
            size = self.cfg.image_size
            yield from padded_eval_batches(batches, self.num_eval_batches, self.eval_batch_size, (size, size, 3))
        finally:
            batches.close()
