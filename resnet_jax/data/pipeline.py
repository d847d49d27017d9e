"""What every input pipeline provides, and the pieces they share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from resnet_jax.errors import DatasetError

Batch = dict[str, np.ndarray]


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
