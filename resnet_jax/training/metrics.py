"""Where metrics go: ``metrics.jsonl`` and TensorBoard event files in the workdir
(process 0 only), and the training metrics averaged over every few steps."""

from __future__ import annotations

import functools
import json
import math
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
    and scalars to TensorBoard (when tensorboardX is installed), whose file is
    flushed at most every `tensorboard_flush_seconds` (a flush syncs to disk:
    1-2 ms, with the device idle, if done at every record) and at `close`."""

    def __init__(self, workdir: str, tensorboard_flush_seconds: float = 10.0):
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._flush_every, self._flushed = tensorboard_flush_seconds, time.time()
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
            if time.time() - self._flushed >= self._flush_every:
                self._tb.flush()
                self._flushed = time.time()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


@jax.jit
def _start(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A window's running sums from its first step's metrics."""
    return _accumulate(None, metrics)


@functools.partial(jax.jit, donate_argnums=0)
def _add(window: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return _accumulate(window, metrics)


def _accumulate(window: dict[str, jax.Array] | None, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums of loss and accuracy, the step count, and the first diverged step of
    the window (1-based, 0 if none) with its loss; per seed where [K]."""
    if window is None:
        zero = jnp.zeros_like(metrics["loss"])
        window = {"loss": zero, "accuracy": zero, "steps": jnp.zeros((), jnp.int32),
                  "diverged_at": jnp.zeros(zero.shape, jnp.int32), "diverged_loss": zero}  # fmt: skip
    steps = window["steps"] + 1
    first = (window["diverged_at"] == 0) & metrics["diverged"]
    return {
        "loss": window["loss"] + metrics["loss"],
        "accuracy": window["accuracy"] + metrics["accuracy"],
        "steps": steps,
        "diverged_at": jnp.where(first, steps, window["diverged_at"]),
        "diverged_loss": jnp.where(first, metrics["loss"], window["diverged_loss"]),
    }


class TrainLog:
    """The training loss and accuracy of each step, averaged over the steps
    since the last `flush` and written as one ``train`` record per seed (with
    the learning rate, images/s and seconds), as the Flax examples do every
    ``log_every_steps``. Each step adds one compiled call (no host round trip);
    the flush reads the window back and stops a diverged run."""

    def __init__(
        self,
        writers: list[MetricWriter],
        batch_size: int,
        learning_rate: Callable[[int], Any],
        max_loss: float = math.inf,
    ):
        """
        Args:
          writers: one per seed trained together (one for an ordinary run).
          batch_size: images per step and seed.
          learning_rate: the schedule, step -> lr.
          max_loss: the divergence bound the train step checked (for the message).
        """
        self.writers, self.batch_size, self.learning_rate = writers, batch_size, learning_rate
        self.max_loss = max_loss
        self.last: list[dict[str, float]] = []  # the records of the last flush, one per seed
        self._window, self._steps, self._t0 = None, 0, time.time()

    def add(self, metrics: dict[str, jax.Array]) -> None:
        """Adds one step's ``{"loss", "accuracy", "diverged"}`` (device arrays, [K] for K seeds)."""
        self._window = _start(metrics) if self._window is None else _add(self._window, metrics)
        self._steps += 1

    def restart_clock(self) -> None:
        """Starts timing anew (after an evaluation, which is not training time)."""
        self._t0 = time.time()

    def flush(self, step: int) -> list[dict[str, float]]:
        """Writes the mean since the last flush as the records of `step` and returns them.

        Raises:
          DivergedError: a step of the window had a loss that is not finite or
            above ``max_loss`` (raised before anything of the window is written).
        """
        if not self._steps:
            return self.last
        window = {k: v for k, v in self._window.items() if k != "steps"}
        per_seed = seeds.per_seed(window, len(self.writers))  # waits for the steps to finish
        seconds = time.time() - self._t0
        for k, sums in enumerate(per_seed):
            if sums["diverged_at"]:
                self._diverged(step - self._steps + int(sums["diverged_at"]), float(sums["diverged_loss"]), k)
        records = []
        for sums in per_seed:
            records.append({
                "loss": float(sums["loss"]) / self._steps,
                "accuracy": float(sums["accuracy"]) / self._steps,
                "lr": float(self.learning_rate(step - 1)),
                "images_per_sec": self._steps * self.batch_size / seconds,
                "seconds": seconds,
                "steps": self._steps,
            })  # fmt: skip
        for writer, record in zip(self.writers, records):
            writer.write(step, "train", record)
        self.last, self._window, self._steps, self._t0 = records, None, 0, time.time()
        return records

    def _diverged(self, step: int, loss: float, seed_index: int) -> None:
        which = f" (seed index {seed_index})" if len(self.writers) > 1 else ""
        why = "is not finite" if not np.isfinite(loss) else f"exceeds {self.max_loss:.4g}, which no healthy run reaches"
        raise DivergedError(
            f"training diverged at step {step}{which}: loss {loss:.4g} {why}; nothing after it is saved. Lower the "
            f"learning rate (now {float(self.learning_rate(step - 1)):.4g}) or check the data"
        )
