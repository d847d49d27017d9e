"""Where metrics go: ``metrics.jsonl`` and TensorBoard event files in the workdir
(process 0 only), and the training metrics averaged over every few steps."""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import DivergedError, cannot_write
from resnet_jax.training import events


class MetricWriter:
    """Appends ``{"step", "split", ...}`` records to ``<workdir>/metrics.jsonl``
    and each record's scalars, as one event, to a TensorBoard event file in
    ``<workdir>/tensorboard`` (`resnet_jax.training.events`), both written
    through at every record (a record is a log window or an evaluation).

    A run resumed at step `after` trains the steps after it again: their
    records, written before the run stopped, are dropped first (from
    ``metrics.jsonl`` and from the event files), so that each step is recorded
    once. A file or folder that cannot be written raises `WorkdirWriteError`."""

    def __init__(self, workdir: str, after: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        try:
            os.makedirs(workdir, exist_ok=True)
            if after is not None:
                drop_records_after(workdir, after)
            self._jsonl = open(self.path, "a")
            self._events = events.EventWriter(os.path.join(workdir, "tensorboard"))
        except OSError as e:
            raise cannot_write(e.filename or self.path, e) from None

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **metrics}
        scalars = [(f"{split}/{k}", float(v)) for k, v in metrics.items() if isinstance(v, (int, float))]
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            self._events.add(step, scalars)
        except OSError as e:
            raise cannot_write(e.filename or self.path, e) from None

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


def drop_records_after(workdir: str, step: int) -> None:
    """Removes the records of steps after `step` from `workdir`'s
    ``metrics.jsonl`` and TensorBoard event files (and a last record cut off
    midway), each file replaced whole, and only where something goes."""
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        kept = [line for line in lines if _jsonl_step(line) <= step]
        if len(kept) < len(lines):
            _replace(path, b"".join(kept))
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        kept = [whole for whole, record in events.frames(data) if events.event_step(record) <= step]
        if sum(map(len, kept)) != len(data):
            _replace(path, b"".join(kept))


def _jsonl_step(line: bytes) -> float:
    """A record's step; a line that is not a whole record (cut off) counts as after every step."""
    try:
        return json.loads(line)["step"] if line.endswith(b"\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


def _replace(path: str, data: bytes) -> None:
    """Writes `data` as `path` in one rename: a stop midway leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


Window = jax.Array  # [K, 5]: the columns below, per population member
LOSS, ACCURACY, STEPS, DIVERGED_AT, DIVERGED_LOSS = range(5)


def empty_window(size: int, sharding: jax.sharding.Sharding | None = None) -> Window:
    """Running sums of a log window with no step yet, for `size` population
    members: one array (one buffer to read back), placed with `sharding`
    (that of the step's window: another placement compiles the step again)."""
    window = jnp.zeros((size, 5), jnp.float32)
    return window if sharding is None else jax.device_put(window, sharding)


def accumulate(window: Window, metrics: dict[str, jax.Array]) -> Window:
    """Adds one step's metrics to the window (inside the compiled step): sums of
    loss and accuracy, the step count, and the first diverged step of the window
    (1-based, 0 if none) with its loss; per member."""
    steps = window[..., STEPS] + 1
    first = (window[..., DIVERGED_AT] == 0) & metrics["diverged"]
    columns = [
        window[..., LOSS] + metrics["loss"],
        window[..., ACCURACY] + metrics["accuracy"],
        steps,
        jnp.where(first, steps, window[..., DIVERGED_AT]),
        jnp.where(first, metrics["loss"], window[..., DIVERGED_LOSS]),
    ]
    return jnp.stack([c.astype(jnp.float32) for c in columns], axis=-1)


_compiling = [0.0]  # seconds this process has spent compiling (JAX's monitoring events)
_COMPILE_EVENTS = ("/jax/core/compile/", "/jax/compilation_cache/cache_retrieval_time_sec")


def _count_compilation(event: str, duration: float, **kwargs: Any) -> None:
    if event.startswith(_COMPILE_EVENTS):
        _compiling[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (JAX's tracing,
    lowering, compiling and reading compiled programs from the cache)."""
    return _compiling[0]


def _ready_at(window: Window) -> float:
    """`time.perf_counter` when `window` is ready on the device (waiting for it, the interpreter's lock released)."""
    window.block_until_ready()
    return time.perf_counter()


class TrainLog:
    """The training loss and accuracy of each step, averaged over the steps of
    a window (``log_every_steps``) and written as one ``train`` record per
    population member (with the learning rate, images/s and seconds). The
    compiled step adds each step to `window`; `flush` reads a window back one
    window behind (while the device runs the next), so the device never waits
    for logging, and `flush(now=True)` (before a save, an evaluation, the end)
    reads everything, stopping a diverged run before anything after it is kept.

    A window's seconds run from the end of the window before it (or from
    `restart_clock`, called where the device has nothing queued: the start of
    training, the end of an evaluation or a save; less its first call, which
    compiles the step) to when its results became ready on the device. A
    thread waits for each window's results as it ends and notes the time they
    are ready (within the interpreter's thread switch interval, 5 ms), so the
    time is the device's whether the device or the host was the slower, and
    the read one window behind still never makes the device wait. So images/s
    is the rate the run trained at, at any window length, the first after a
    start, a resume or an evaluation included."""

    def __init__(
        self,
        writers: list[MetricWriter],
        batch_size: int,
        learning_rates: Callable[[int], list[float]],
        max_loss: float = math.inf,
        sharding: jax.sharding.Sharding | None = None,
    ):
        """
        Args:
          writers: one per population member (one for an ordinary run).
          batch_size: images per step and member.
          learning_rates: step -> each member's learning rate (on the host).
          max_loss: the divergence bound the train step checked (for the message).
          sharding: where the compiled step puts its window (replicated over
            the mesh): each window starts there, so the step compiles once.
        """
        self.writers, self.batch_size, self.learning_rates = writers, batch_size, learning_rates
        self.max_loss = max_loss
        self.last: list[dict[str, float]] = []  # the records written last, one per member
        self._empty = empty_window(len(writers), sharding)  # the start of every window (the step does not donate it)
        self.window = self._empty
        self._steps = 0
        self._start: float | None = time.perf_counter()  # None: when the window before it was ready
        self._ended = self._start  # when the last window written was ready
        self._ready = ThreadPoolExecutor(1, thread_name_prefix="window-ready")  # one waiter: windows in order
        self._pending: tuple[Window, int, int, float | None, Future] | None = None

    def added(self, steps: int = 1, call_seconds: float = 0.0) -> None:
        """Counts the steps the compiled step added to `window`; `call_seconds`:
        how long its call took on the host (left out of the first window after
        `restart_clock`: the device was idle while it compiled and dispatched
        the step, whose work starts as the call returns)."""
        if self._steps == 0 and self._start is not None:
            self._start += call_seconds
        self._steps += steps

    def restart_clock(self) -> None:
        """Starts the next window's time now: where the device has nothing queued
        and the host did other work (an evaluation, a save), which is not training."""
        self._start = time.perf_counter()

    def flush(self, step: int, now: bool = False) -> list[dict[str, float]]:
        """Ends the window at `step`; writes the previous window's records (all of
        them with `now`) and returns the last written.

        Raises:
          DivergedError: a step of a window read had a loss that is not finite or
            above ``max_loss`` (raised before anything of that window is written).
        """
        if self._steps:
            self.window.copy_to_host_async()
            ready = self._ready.submit(_ready_at, self.window)
            ended = (self.window, step, self._steps, self._start, ready)
            self.window, self._steps, self._start = self._empty, 0, None
            if self._pending is not None:
                self._write(*self._pending)
            self._pending = ended
        if now and self._pending is not None:
            pending, self._pending = self._pending, None
            self._write(*pending)
        return self.last

    def _write(self, window: Window, step: int, steps: int, start: float | None, ready: Future) -> None:
        members = np.asarray(window)  # copied to the host since its flush
        end = ready.result()
        seconds = max(end - (self._ended if start is None else start), 1e-9)
        self._ended = end
        for k, m in enumerate(members):
            if m[DIVERGED_AT]:
                self._diverged(step - steps + int(m[DIVERGED_AT]), float(m[DIVERGED_LOSS]), k)
        lrs = self.learning_rates(step - 1)
        records = []
        for m, lr in zip(members, lrs):
            records.append({
                "loss": float(m[LOSS]) / steps,
                "accuracy": float(m[ACCURACY]) / steps,
                "lr": float(lr),
                "images_per_sec": steps * self.batch_size / seconds,
                "seconds": seconds,
                "steps": steps,
            })  # fmt: skip
        for writer, record in zip(self.writers, records):
            writer.write(step, "train", record)
        self.last = records

    def _diverged(self, step: int, loss: float, member: int) -> None:
        which = f" (member {member})" if len(self.writers) > 1 else ""
        why = "is not finite" if not np.isfinite(loss) else f"exceeds {self.max_loss:.4g}, which no healthy run reaches"
        raise DivergedError(
            f"training diverged at step {step}{which}: loss {loss:.4g} {why}; nothing after it is saved. Lower the "
            f"learning rate (now {float(self.learning_rates(step - 1)[member]):.4g}) or check the data"
        )
