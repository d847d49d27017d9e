"""The layout of a global batch: one value, computed once from the config
(`from_config`), that the pipelines and the train step read and none derives
again.

A recipe's source trained on ``source_devices`` = S devices (GPUs, TPU
replicas), each with its own batch of ``b = batch_size / S`` images: its own
batch-norm statistics, its own mixup/cutmix draw, and, with repeated
augmentation, its own copy of an image (torchvision's `RASampler` and timm's
`RepeatAugSampler` deal the copies of an image to different replicas). With
S > 0 the global batch is laid out as those S batches, one after another,
whatever devices the run has:

* positions ``[d * b, (d + 1) * b)`` are source device d's batch;
* each batch-norm group (`bn_group_size`) and each mixing chunk
  (`mixup_chunk`) is one source device's batch;
* with ``r`` copies of each image (``data.repeated_augmentations``), slot u of
  source device d at step t reads position ``t * B + u * S + d`` of the epoch's
  repeated list ``[a, a, a, b, b, b, ...]``: rank d of RASampler reads its
  positions ``d, d + S, d + 2S, ...``, so the copies of an image go to r
  different source devices (`order`).

``gradient_accumulation_steps`` = k runs each global batch as k micro-batches
of ``batch_size / k`` consecutive positions, one after another on the same
devices, then applies one update: with k dividing S, each micro-batch holds
S / k whole source batches, so a run of one device and k = S trains what S
devices did.

S = 0 (the default) keeps the fields as set: ``model_kwargs.bn_group_size`` and
``mixup_chunk`` (0: over the whole (micro-)batch), copies side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet_jax.data import repeated
from resnet_jax.errors import ConfigError


@dataclass(frozen=True)
class BatchLayout:
    """How a run's global batch is laid out (`from_config`).

    Attributes:
      batch_size: images per update, over all devices and processes.
      source_devices: the recipe's source's device count (0: no source layout).
      micro_batches: batches run one after another per update (gradient accumulation).
      copies: repeated augmentation's copies of each image (1: off).
      bn_group_size: batch-norm statistics per this many consecutive images (0: the whole micro-batch).
      mixup_chunk: one mixup/cutmix draw per this many consecutive images (0: one per global batch).
      processes: the processes that make the global batch, each its consecutive share.
    """

    batch_size: int
    source_devices: int = 0
    micro_batches: int = 1
    copies: int = 1
    bn_group_size: int = 0
    mixup_chunk: int = 0
    processes: int = 1

    @property
    def device_batch(self) -> int:
        """Images of one source device (the global batch when there is no source layout)."""
        return self.batch_size // self.source_devices if self.source_devices else self.batch_size

    @property
    def micro_batch_size(self) -> int:
        """Images of one micro-batch."""
        return self.batch_size // self.micro_batches

    @property
    def process_batch(self) -> int:
        """Images of one process's share of the global batch."""
        return self.batch_size // self.processes

    def order(self, whole: bool = False) -> np.ndarray | None:
        """Where each position of a process's share of the batch (`whole`: of the
        global batch, the processes' shares one after another) reads from:
        position ``d * b + u`` (local source device d, slot u) holds position
        ``u * S_local + d`` of the share's run of the repeated list, so that the
        copies of an image (consecutive in that list) go to different source
        devices, as RASampler deals them. None where it is the identity (no
        copies, or no source layout)."""
        if self.copies == 1 or not self.source_devices:
            return None
        local = self.source_devices // self.processes
        d, u = np.divmod(np.arange(self.process_batch), self.device_batch)
        share = u * local + d
        if whole:
            share = (np.arange(self.processes)[:, None] * self.process_batch + share).reshape(-1)
        return share.astype(np.int64)


def from_config(config: Any, processes: int = 1) -> BatchLayout:
    """The layout of `config` (resolved) over `processes` processes.

    Raises:
      ConfigError: ``source_devices`` negative or not dividing the batch (or the
        processes, with repeated augmentation), a ``bn_group_size`` or
        ``mixup_chunk`` set to another value than the source's device batch, or
        ``gradient_accumulation_steps`` < 1, not dividing the batch, or (with a
        source layout) not dividing the source devices.
    """
    batch = int(config.batch_size)
    source = _whole(config.get("source_devices", 0), "source_devices", minimum=0)
    k = _whole(config.get("gradient_accumulation_steps", 1), "gradient_accumulation_steps", minimum=1)
    copies = repeated.repeats(config.data)
    group = int(config.model_kwargs.get("bn_group_size", 0))
    chunk = int(config.get("mixup_chunk", 0))
    if batch <= 0:
        raise ConfigError(f"batch_size={batch} must be positive")
    if batch % k:
        raise ConfigError(f"gradient_accumulation_steps={k} must divide batch_size={batch}")
    if source:
        if batch % source:
            raise ConfigError(f"source_devices={source} must divide batch_size={batch} (images per source device)")
        per_device = batch // source
        for field, value in (("model_kwargs.bn_group_size", group), ("mixup_chunk", chunk)):
            if value not in (0, per_device):
                raise ConfigError(
                    f"{field}={value} contradicts source_devices={source}, which makes it {per_device} "
                    f"(batch_size / source_devices); leave it 0, or set source_devices=0"
                )
        if source % k:
            raise ConfigError(f"gradient_accumulation_steps={k} must divide source_devices={source}: each "
                              "micro-batch holds whole source-device batches")  # fmt: skip
        if copies > 1 and source % processes:
            raise ConfigError(f"source_devices={source} with repeated augmentation must be a multiple of the "
                              f"{processes} processes (each deals the copies to its own source devices); "
                              "or set source_devices=0")  # fmt: skip
        group, chunk = per_device, per_device
    elif group and (batch // k) % group:
        raise ConfigError(f"model_kwargs.bn_group_size={group} must divide the micro-batch of {batch // k} images")
    return BatchLayout(batch, source, k, copies, group, chunk, processes)


def _whole(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{field}={value!r} must be a whole number >= {minimum}")
    return int(value)
