"""Where metrics go: ``metrics.jsonl`` and TensorBoard event files in the workdir
(process 0 only), and the training metrics averaged over every few steps."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import DivergedError
from resnet_jax.training import seeds


class MetricWriter:
    """Appends ``{"step", "split", ...}`` records to ``<workdir>/metrics.jsonl``
    and scalars to TensorBoard (when tensorboardX is installed)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            print("tensorboardX is not installed: metrics go to metrics.jsonl only.")

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


class TrainLog:
    """The training loss and accuracy of each step, averaged over the steps
    since the last `flush` and written as one ``train`` record per seed (with
    the learning rate, images/s and seconds), as the Flax examples do every
    ``log_every_steps``."""

    def __init__(self, writers: list[MetricWriter], batch_size: int, learning_rate: Callable[[int], Any]):
        """
        Args:
          writers: one per seed trained together (one for an ordinary run).
          batch_size: images per step and seed.
          learning_rate: the schedule, step -> lr.
        """
        self.writers, self.batch_size, self.learning_rate = writers, batch_size, learning_rate
        self.last: list[dict[str, float]] = []  # the records of the last flush, one per seed
        self._sums, self._steps, self._t0 = None, 0, time.time()

    def add(self, metrics: dict[str, jax.Array]) -> None:
        """Adds one step's ``{"loss", "accuracy"}`` (device arrays, [K] for K seeds)."""
        self._sums = metrics if self._sums is None else jax.tree_util.tree_map(jnp.add, self._sums, metrics)
        self._steps += 1

    def restart_clock(self) -> None:
        """Starts timing anew (after an evaluation, which is not training time)."""
        self._t0 = time.time()

    def flush(self, step: int) -> list[dict[str, float]]:
        """Writes the mean since the last flush as the records of `step` and returns them.

        Raises:
          DivergedError: a seed's loss is not finite (before anything is saved).
        """
        if not self._steps:
            return self.last
        per_seed = seeds.per_seed(self._sums, len(self.writers))  # waits for the steps to finish
        seconds = time.time() - self._t0
        records = []
        for k, sums in enumerate(per_seed):
            loss = float(sums["loss"]) / self._steps
            if not np.isfinite(loss):
                which = f" (seed index {k})" if len(self.writers) > 1 else ""
                raise DivergedError(
                    f"training loss is {loss} at step {step}{which}; stopping without saving: the last good "
                    "checkpoint is kept. Lower the learning rate or check the data."
                )
            records.append({
                "loss": loss,
                "accuracy": float(sums["accuracy"]) / self._steps,
                "lr": float(self.learning_rate(step - 1)),
                "images_per_sec": self._steps * self.batch_size / seconds,
                "seconds": seconds,
                "steps": self._steps,
            })  # fmt: skip
        for writer, record in zip(self.writers, records):
            writer.write(step, "train", record)
        self.last, self._sums, self._steps, self._t0 = records, None, 0, time.time()
        return records
