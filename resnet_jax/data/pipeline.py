"""What every input pipeline provides (`Pipeline`, `OnDevicePipeline`), and the
pieces they share. Pipelines compile nothing: `resnet_jax.training.compiled`
builds the one train step over either kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from jax.sharding import Mesh

from resnet_jax.errors import DatasetError

Batch = dict[str, np.ndarray]


@runtime_checkable
class Pipeline(Protocol):
    """An input pipeline. Host pipelines (tf.data, Grain) yield from `train_epoch`
    this process's numpy share of each global training batch."""

    info: DataInfo
    mesh: Mesh

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch (full global batches)."""

    def train_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Any]:
        """One item per training step of `epoch` from `start_step`: what the compiled step takes."""

    def eval_batches(self) -> Iterator[Batch]:
        """This process's share of every evaluation example once, padded and masked."""


@runtime_checkable
class OnDevicePipeline(Pipeline, Protocol):
    """A pipeline whose batches are made inside the compiled step: `train_epoch`
    yields the epoch's inputs (the same device arrays at every step), and
    `make_batch(data, *inputs, step)`, a pure function traced inside the step,
    gathers and augments batch `step` of the epoch from `data` (device arrays).
    The inputs are stacked per population member, each drawn with its own seed
    (the data is shared)."""

    data: Batch
    num_members: int

    def make_batch(self, data: Batch, *inputs_and_step: Any) -> Batch:
        """Batch `step` of the epoch (the last argument), traced inside the step."""


@dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a dataset."""

    class_names: tuple[str, ...]
    num_train: int
    num_eval: int
    image_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Pads a (last, partial) batch to `batch_size` and adds a 0/1 ``mask``.

    Evaluation counts only ``mask == 1`` examples, so every example of a split is
    counted exactly once whatever the batch size and number of devices. A
    ``mask`` already in `batch` (0 for an example left out) is kept.
    """
    n = len(batch["label"])
    if n > batch_size:
        raise ValueError(f"batch of {n} examples exceeds batch_size {batch_size}")
    out = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    mask = np.asarray(batch.get("mask", np.ones(n)), np.float32)
    out["mask"] = np.concatenate([mask, np.zeros(batch_size - n, np.float32)])
    return out


def padded_eval_batches(
    batches: Iterable[Batch], num_batches: int, batch_size: int, image_shape: tuple[int, ...]
) -> Iterator[Batch]:
    """`batches` padded and masked to `batch_size`, then empty (all-masked) batches
    up to `num_batches`: processes may hold shares of different sizes, and all
    must run as many evaluation steps."""
    yielded = 0
    for batch in batches:
        yielded += 1
        yield pad_batch(batch, batch_size)
    empty = {"image": np.zeros((0, *image_shape), np.uint8), "label": np.zeros((0,), np.int32)}
    for _ in range(num_batches - yielded):
        yield pad_batch(empty, batch_size)


def array_eval_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, shard: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
    """Padded, masked evaluation batches over in-memory arrays.

    `shard` = (process_index, process_count): this process's part of each
    global batch, so that all processes run the same number of steps.
    """
    index, count = shard
    local = batch_size // count
    for start in range(0, len(labels), batch_size):
        sl = slice(start + index * local, min(start + (index + 1) * local, len(labels)))
        yield pad_batch({"image": images[sl], "label": labels[sl]}, local)


def check_class_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    if len(names) < 2:
        raise DatasetError(f"a classification dataset needs at least 2 classes, found {list(names)}")
    return names
