"""How a training run is stopped from outside, or by its device: SIGTERM and
Ctrl-C become a save and one line; running out of device memory becomes one
line naming what to lower.

* SIGTERM (a preemption notice), SIGHUP (its terminal closed; unless started
  under ``nohup``) and a first Ctrl-C (SIGINT) set a flag that the loop reads
  once a step: it saves at that step and stops (`Preempted`, or `Interrupted`
  for Ctrl-C). A SIGTERM while the run starts is kept until its first step.
* A second Ctrl-C, or a Ctrl-C before training began (nothing to save), stops
  at once (`StoppedNow`): what a person at a terminal means by pressing it
  again. No save is started; one under way is finished first (a Ctrl-C never
  cuts a save short, which would leave a partial folder and lose it).
* In a run of several processes each one's flag is only its own, while the
  steps, evaluation batches and saves are collective: the loop acts on the stop
  the processes agree on (`agree`, read by `Agreement` every ~2 s at the same
  step of each), so that all save at the same step, wherever the signal came.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from resnet_jax import parallel, peers
from resnet_jax.errors import OutOfMemoryError, StoppedNow

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C", signal.SIGHUP: "SIGHUP"}
PRECEDENCE = (None, "Ctrl-C", "SIGHUP", "SIGTERM")  # processes that got different stops agree on the last any got
AGREE_SECONDS = 2.0  # between two agreements of a multi-process run: a stop well inside a ~30 s preemption notice


class Stops:
    """``with Stops() as stops:`` SIGTERM, SIGHUP and Ctrl-C turned into `requested`
    (the name of the first one that came), which the loop checks each step;
    the previous handlers are put back at the end. Set `training` once a step
    may have run: a Ctrl-C before that stops at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.training = False
        self._previous: dict[int, Any] = {}
        self._saving = False
        self._stop_after_save: str | None = None

    def __enter__(self) -> Stops:
        for signum in NAMES:
            try:
                previous = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                continue
            self._previous[signum] = previous
            if previous is signal.SIG_IGN:  # nohup, or a background job of a script: left ignored
                signal.signal(signum, signal.SIG_IGN)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and (self.requested or not self.training):
            if self.requested:  # the loop adds what is on disk
                message = f"Ctrl-C{' again' if self.requested == 'Ctrl-C' else ''}: stopped at once"
            else:
                message = "Ctrl-C: stopped before training began (nothing new to save); the same command resumes"
            if self._saving:  # the save goes on to its end: no partial folder, nothing lost
                self._stop_after_save = message
                return
            raise StoppedNow(message)
        if self.requested is None:
            self.requested = NAMES[signum]
            if signum == signal.SIGINT:  # os.write: a print could land inside the progress bar's own write
                os.write(2, b"\nCtrl-C: saving a checkpoint, then stopping (Ctrl-C again stops at once)\n")

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """``with stops.saving():`` a save that a Ctrl-C does not cut short: one
        that comes meanwhile stops the run once the save has returned."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._stop_after_save:
            raise StoppedNow(self._stop_after_save)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def agree(flag: str | None, proposal: tuple[int, ...] = ()) -> tuple[str | None, tuple[int, ...]]:
    """The stop all processes of the run act on, given this process's `flag`
    (None, or the name of the signal it got): the one of them last in
    `PRECEDENCE` (SIGTERM before SIGHUP before Ctrl-C), None if no process has
    one; and process 0's `proposal` (ints the processes must agree on). One
    collective of a few ints a process; on one process, `flag` and `proposal`
    themselves, with none."""
    if jax.process_count() == 1:
        return flag, tuple(proposal)
    rows = parallel.gather_from_processes((PRECEDENCE.index(flag), *proposal))
    return PRECEDENCE[int(rows[:, 0].max())], tuple(int(v) for v in rows[0, 1:])


class Agreement:
    """``agreed()``: `Stops.requested` as all processes of a multi-process run
    agree on it (`agree`), for reads made at the same points of every process
    (each train step, each evaluation batch), so that all act on a stop at the
    same point. An agreement waits for every process and for the work queued
    on its device (the loop otherwise runs ahead of it), so only every
    `interval`-th read agrees, the others return the last agreed value:
    process 0 sets the interval at each agreement from the time its reads
    took, so that about `seconds` pass between two (a step of any length
    costs one wait every ~2 s); it at most doubles from one to the next. A stop, once agreed, stays; every process is
    then on its way out (`peers.exiting_together`).

    The same agreement carries process 0's clock: `clock_due` (set by the
    loop: whether a checkpoint is due by the minutes since the last one) is
    asked on process 0 at each agreement, and `take_save_due` then says so on
    every process at the same read, so that all save at the same step (each
    process's own clock could say so at different steps, a save, a collective,
    then waiting for ever on a process running its next step)."""

    def __init__(self, stops: Stops, seconds: float = AGREE_SECONDS) -> None:
        self.stops, self.seconds = stops, seconds
        self.value: str | None = None
        self.clock_due: Callable[[], bool] = lambda: False
        self._save_due = False
        self.interval = 1  # the first read agrees: a SIGTERM that came while the run was starting
        self._reads = 0
        self._since = time.monotonic()

    def __call__(self) -> str | None:
        """The agreed stop at this read (None: go on); the same read of each process returns the same."""
        self._reads += 1
        if self.value is None and self._reads >= self.interval:
            per_read = max(time.monotonic() - self._since, 1e-6) / self._reads
            proposal = max(1, min(2 * self.interval, int(self.seconds / per_read)))  # one odd read: at most double
            self.value, (self.interval, due) = agree(self.stops.requested, (proposal, int(self.clock_due())))
            self._save_due = self._save_due or bool(due)
            self._reads, self._since = 0, time.monotonic()
            if self.value is not None:
                peers.exiting_together()  # every process saves at this step and exits
        return self.value

    def take_save_due(self) -> bool:
        """Whether an agreement since the last call found a time-based save due (on every process alike)."""
        due, self._save_due = self._save_due, False
        return due


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's RESOURCE_EXHAUSTED (a compiled program's buffers do not fit the device)."""
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


_SIZES = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KiB": 2**10, "M": 2**20, "MB": 2**20, "MiB": 2**20,
          "G": 2**30, "GB": 2**30, "GiB": 2**30, "T": 2**40, "TB": 2**40, "TiB": 2**40}  # fmt: skip
_NEEDED = (  # XLA's wordings: the GPU allocator, a buffer of a program, TPU's compiler
    re.compile(r"allocat\w* (?P<n>[\d.]+) ?(?P<unit>bytes|[KMGT]i?B)\b"),
    re.compile(r"Used (?P<n>[\d.]+)(?P<unit>[KMGT]) of (?P<has_n>[\d.]+)(?P<has_unit>[KMGT])"),
)


def _bytes(number: str, unit: str) -> float:
    return float(number) * _SIZES["B" if unit == "bytes" else unit]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def device_memory() -> float | None:
    """Bytes of memory of one device: its allocator's limit where the runtime
    says (GPU, TPU), else the host's memory for a CPU device, else None."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError):
            return None
    return None


def out_of_memory(error: BaseException, config: ml_collections.ConfigDict, evaluating: bool) -> OutOfMemoryError:
    """The one-line error of a run whose step (or evaluation) did not fit: the
    model, the batch per device, the image size, what the allocation needed
    and what the device has (from XLA's message, else the runtime), and what
    to lower."""
    text = " ".join(str(error).split())
    needed = has = None
    for pattern in _NEEDED:
        m = pattern.search(text)
        if m:
            needed = _bytes(m["n"], m["unit"])
            if "has_n" in m.groupdict():
                has = _bytes(m["has_n"], m["has_unit"])
            break
    has = has or device_memory()
    devices = jax.device_count()
    batch, name = (config.eval_batch_size, "eval_batch_size") if evaluating else (config.batch_size, "batch_size")
    size = config.data.get("train_image_size") or config.data.image_size
    size = config.data.image_size if evaluating else size
    what = "the evaluation" if evaluating else "training"
    amounts = ", ".join(
        part for part in (f"the allocation needed {_gib(needed)}" if needed else "",
                          f"the device has {_gib(has)}" if has else "") if part
    )  # fmt: skip
    lower = f"lower {name}" + ("" if evaluating else " (and the learning rate with it), or data.image_size")
    if not config.half_precision and not evaluating:
        lower += ", or set half_precision=True"
    return OutOfMemoryError(
        f"out of {jax.devices()[0].platform} device memory in {what}: {config.model} at {batch // devices} "
        f"images per device ({name}={batch} over {devices} devices) of {size} px"
        f"{f': {amounts}' if amounts else ''}; {lower} (XLA: {text[:160]})"
    )
