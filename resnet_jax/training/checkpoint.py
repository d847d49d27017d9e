"""Checkpoint storage: Orbax checkpoints of the whole train state, with their
metadata, and what keeps them safe from damage, failed saves and a full disk.

Layout: ``<workdir>/checkpoints/<step>/{state,metadata}``. ``state`` is the
train state as a plain nested dict (params, batch_stats, opt_state, step, EMA,
rng); ``metadata`` is JSON of the schema of `resnet_jax.training.metadata`
(written as given, read back through its `upgrade`). Orbax writes each step
into a temporary folder and renames it only once complete, so a save cut off
midway is never found by `latest_step`. A run on the Grain pipeline adds
``data``: its input iterator's state.

Faults: a checkpoint whose files cannot be read (truncated by a full disk or a
copy cut short, a metadata file lost or overwritten) raises
`CheckpointDamagedError`. Training sets it aside into
``<workdir>/checkpoints.damaged/`` and resumes from the newest readable one
(`restore_newest`); `resnet_jax.restore` skips it for "latest" and "best". A
save that cannot be written (a full disk) raises `CheckpointWriteError` at that
save, or at the next `check_saved` for an asynchronous one, and removes its
partial folder; the earlier checkpoints stay as they were. Orbax's tracebacks
of a failed save and of the reads abandoned after a failed one are dropped
(`_drop_orbax_tracebacks`, `_quiet_abandoned_io`): the one-line error says what
happened.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from resnet_jax.errors import (
    CheckpointDamagedError,
    CheckpointMismatchError,
    CheckpointWriteError,
    NotFoundError,
    UserError,
    cannot_write,
    warn,
    write_advice,
)
from resnet_jax.training.metadata import upgrade
from resnet_jax.training.state import step_of

DAMAGED_DIR = "checkpoints.damaged"


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's handler of the state, whose arrays are each written whole by their
    first replica (Orbax's default on GPUs). Its default elsewhere,
    replica-parallel writes, has every replica of a replicated array copy out a
    slice of it: one compiled slice per array shape and a slice per array and
    device at every save (docs/cpu.md has what it cost). The arrays' files are
    those `ocp.StandardCheckpointHandler` wrote for older checkpoints (less its
    ``array_metadatas/`` record of each process's shards), and both restore alike."""
    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        (jax.Array, th.ArrayHandler(use_replica_parallel=False)),
        (np.ndarray, th.NumpyHandler()),  # converted weights
        *((t, th.ScalarHandler()) for t in (int, float, np.number)),
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _restore_args(abstract: Any) -> ocp.args.PyTreeRestore:
    """Restores into `abstract`'s shapes, dtypes and shardings (what `StandardRestore` does)."""
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def _reason(error: BaseException) -> str:
    """The innermost cause of `error`, on one short line (TensorStore's outer
    messages are a page of JSON; the cause says e.g. OUT_OF_RANGE)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def _abandoned_io(error: BaseException | None) -> bool:
    """Whether `error` is one of Orbax's abandoned array reads or writes: the
    ones still running when another failed, which end in the background."""
    text = str(error)
    return text == "Event loop is closed" or text.startswith("Encountered error while reading array index")


def _quiet_abandoned_io() -> None:
    """After a failed Orbax read or write, its other array reads or writes end in
    the background, a page of tracebacks each: through `sys.unraisablehook`
    ("Event loop is closed") or as asyncio's "Task exception was never
    retrieved" log record. This process drops those (the one-line warning or
    error says what happened) and passes every other on."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _NoAbandonedIO) for f in logger.filters):
        logger.addFilter(_NoAbandonedIO())
    previous = sys.unraisablehook
    if getattr(previous, "quiet_abandoned_io", False):
        return

    def hook(unraisable: Any) -> None:
        if not _abandoned_io(unraisable.exc_value):
            previous(unraisable)

    hook.quiet_abandoned_io = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class _NoAbandonedIO(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's
    abandoned reads (see `_quiet_abandoned_io`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _abandoned_io(record.exc_info[1]))


class _NoOrbaxTracebacks(logging.Filter):
    """Drops Orbax's log records that carry a traceback (a failed background
    save logs one per array, hundreds of lines): the failure reaches the
    trainer as an exception, which `Checkpointer` turns into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


def _drop_orbax_tracebacks() -> None:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _NoOrbaxTracebacks) for f in logger.filters):
        logger.addFilter(_NoOrbaxTracebacks())


def _grain(required: bool) -> Any:
    """The grain module where a run needs it (`required`: its pipeline's iterator
    is saved), else where it imports; a missing or broken grain (a dependency of
    its own missing) stops no run that does not use it."""
    if required:
        import grain

        return grain
    try:
        import grain
    except Exception:  # an optional package that fails to import is as good as absent
        return None
    return grain


def _to_tree(state: Any) -> dict[str, Any]:
    tree = flax.serialization.to_state_dict(state)
    return {k: v for k, v in tree.items() if v is not None}


class Checkpointer:
    """Saves and restores train states under ``<workdir>/checkpoints``."""

    def __init__(
        self, workdir: str, keep: int = 3, keep_best: bool = True, async_save: bool = True, data_iterator: Any = None
    ):
        """
        Args:
          workdir: the run's folder.
          keep: how many of the latest checkpoints to keep.
          keep_best: also keep the checkpoint of best eval top-1.
          async_save: write in a background thread (training goes on meanwhile).
          data_iterator: an input pipeline's Grain iterator, saved with every state
            (item ``data``, Grain's Orbax handler) and restored with it where saved.
        """
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        policies: list[Any] = [cm.LatestN(n=keep)]
        if keep_best:
            policies.append(
                cm.BestN(get_metric_fn=lambda m: m["top1"], n=1, keep_checkpoints_without_metrics=False)
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            # The temporary folders made before the save returns: made by a
            # thread of their own, a save that fails at once (a full disk)
            # leaves that thread to recreate the folder after it is removed.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            create=True,
        )
        handlers = {"state": _state_handler(), "metadata": ocp.JsonCheckpointHandler()}
        self.data_iterator = data_iterator
        grain = _grain(required=data_iterator is not None)
        if grain is not None:  # its handler also lets a checkpointer without an iterator read past the item
            handlers["data"] = grain.checkpoint.CheckpointHandler()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        _drop_orbax_tracebacks()
        _quiet_abandoned_io()
        self._saving: int | None = None  # the step of the last save started
        self._failed: set[int | None] = set()  # steps whose save failed

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def by_preference(self, which: str) -> list[int]:
        """The steps in the order "latest" or "best" (highest eval top-1 first, then
        the steps without metrics, latest first) would pick them; a step whose
        metadata cannot be read is left out with a warning."""
        steps = sorted(self.all_steps(), reverse=True)
        if which == "latest":
            return steps
        scored, unscored = [], []
        for step in steps:
            try:
                top1 = (self.metadata(step)["metrics"] or {}).get("top1")
            except CheckpointDamagedError as e:
                warn(f"{e}; skipped")
                continue
            (unscored if top1 is None else scored).append((top1, step))
        return [step for _, step in sorted(scored, reverse=True)] + [step for _, step in unscored]

    def save(self, state: Any, metadata: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Saves `state` at its step (asynchronously), with `metadata` and eval `metrics`.

        Raises:
          CheckpointWriteError: this save (or an earlier asynchronous one) could
            not be written, or the disk has less free space than the state's size.
        """
        self.wait()  # Orbax would wait for the previous save anyway; this names its step if it failed
        step = step_of(state)
        tree = _to_tree(state)
        self._check_free_space(step, tree)
        metadata = {**metadata, "step": step, "metrics": metrics}
        self._saving = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(tree), metadata=ocp.args.JsonSave(metadata), **self._data("Save")
                ),
                metrics={"top1": metrics["top1"]} if metrics and "top1" in metrics else None,
                force=True,
            )
        except Exception as e:
            raise self._write_error(step, e) from e

    def check_saved(self) -> None:
        """Raises `CheckpointWriteError` if an asynchronous save has failed
        (cheap: the trainer calls it at every log step)."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._write_error(self._saving, e) from e

    def _check_free_space(self, step: int, tree: dict[str, Any]) -> None:
        """Refuses a save that cannot fit: its arrays' size (an upper bound, as Orbax
        compresses) against the free space, so a full disk stops the run here."""
        needed = sum(x.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "nbytes"))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointWriteError(
                f"cannot save step {step} into {self.directory}: it needs up to {needed / 2**20:.1f} MiB and "
                f"{free / 2**20:.1f} MiB are free; {self._advice(step, 'free space')}"
            )

    def _write_error(self, step: int | None, error: BaseException) -> CheckpointWriteError:
        """The one-line error of a failed save, after removing its partial folder."""
        self._failed.add(step)
        self._remove_partial()
        free = shutil.disk_usage(self.directory).free / 2**20
        reason = _reason(error)
        return CheckpointWriteError(
            f"could not save step {step} into {self.directory} ({reason}; {free:.1f} MiB free); "
            f"{self._advice(step, write_advice(reason))}"
        )

    def _remove_partial(self) -> None:
        """Removes the temporary folders of failed saves (again at `close`, as
        Orbax's threads may still be making them when the error comes)."""
        if jax.process_index() == 0:
            for step in self._failed:
                for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
                    shutil.rmtree(partial, ignore_errors=True)

    def _advice(self, failed: int | None, remedy: str) -> str:
        self.manager.reload()
        kept = [s for s in self.all_steps() if s != failed]
        where = f"steps {kept} are intact" if kept else "no earlier checkpoint exists"
        return f"{where}: {remedy} and run the same command to resume"

    def prepare_to_train(self) -> None:
        """Before a run writes here: removes what saves cut off midway left
        (Orbax's temporary folders: never read, and the workdir's lock means no
        save is running), and checks that the folder can be written, so that a
        read-only one stops the run before its first step, not at its first save.

        Raises:
          WorkdirWriteError: `directory` cannot be written.
        """
        if jax.process_index() != 0:
            return
        for partial in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
            shutil.rmtree(partial, ignore_errors=True)
        probe = os.path.join(self.directory, f".write-test-{os.getpid()}")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.remove(probe)
        except OSError as e:
            raise cannot_write(self.directory, e, ": checkpoints go there") from None

    def _read(self, step: int, read: Callable[[], Any]) -> Any:
        """`read()`, with any failure to read the step's files raised as `CheckpointDamagedError`."""
        try:
            return read()
        except UserError:
            raise
        except Exception as e:
            raise CheckpointDamagedError(f"checkpoint {self.directory}/{step} cannot be read ({_reason(e)})") from e

    def set_aside(self, step: int) -> str:
        """Moves a damaged step out of the checkpoints (into ``checkpoints.damaged/``,
        so that keep-N neither counts nor overwrites it); returns where it went."""
        target = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR, f"{step}.{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()
        return target

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The metadata saved with `step` (default: the latest), in the current
        schema (`resnet_jax.training.metadata.upgrade`).

        Raises:
          CheckpointVersionError: it is of a later schema than this code reads.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(metadata=ocp.args.JsonRestore())
        info = self._read(step, lambda: self.manager.restore(step, args=args)["metadata"])
        if not isinstance(info, dict) or "model" not in info:
            raise CheckpointDamagedError(f"checkpoint {self.directory}/{step} cannot be read (metadata is not ours)")
        return upgrade(info, where=f"checkpoint {self.directory}/{step}")

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores `step` (default: the latest) into the structure, shapes and
        shardings of `target` (a train state on the current devices).

        Raises:
          CheckpointMismatchError: listing every array whose shape differs or
            that is missing, e.g. a checkpoint of another model.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        target_tree = _to_tree(target)
        self._check_shapes(step, target_tree)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target_tree)
        saved_data = self.data_iterator is not None and (epath.Path(self.directory) / str(step) / "data").exists()
        args = ocp.args.Composite(state=_restore_args(abstract), **self._data("Restore", saved_data))
        restored = self._read(step, lambda: self.manager.restore(step, args=args)["state"])
        return flax.serialization.from_state_dict(target, {**flax.serialization.to_state_dict(target), **restored})

    def _data(self, action: str, saved: bool = True) -> dict[str, Any]:
        """``{"data": Grain's CheckpointSave/CheckpointRestore of the data iterator}``, or
        nothing without an iterator (or, restoring, when the step holds none)."""
        if self.data_iterator is None or not saved:
            return {}
        import grain

        return {"data": getattr(grain.checkpoint, f"Checkpoint{action}")(self.data_iterator)}

    def restore_tree(self, step: int | None = None, sharding: Any = None) -> dict[str, Any]:
        """Restores `step` as the nested dict it was saved as, without a target.

        Every array is placed with `sharding` (default: the first local device),
        so a checkpoint saved on 8 devices restores on 1 and the reverse.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = self._state_metadata(step)
        abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved)
        args = ocp.args.Composite(state=_restore_args(abstract))
        return self._read(step, lambda: self.manager.restore(step, args=args)["state"])

    def _state_metadata(self, step: int) -> Any:
        """The saved arrays' shapes and dtypes (Orbax's tree metadata of ``state``)."""
        saved = self._read(step, lambda: self.manager.item_metadata(step)["state"])
        if not saved:
            raise CheckpointDamagedError(f"checkpoint {self.directory}/{step} cannot be read (no state/_METADATA)")
        return saved

    def _check_shapes(self, step: int, target_tree: dict[str, Any]) -> None:
        saved = self._state_metadata(step)
        saved_shapes = {
            jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]
        }
        problems = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(target_tree)[0]:
            key = jax.tree_util.keystr(path)
            if key not in saved_shapes:
                problems.append(f"{key}: missing from the checkpoint")
            elif saved_shapes[key] != tuple(leaf.shape):
                problems.append(f"{key}: checkpoint {saved_shapes[key]} vs model {tuple(leaf.shape)}")
        if problems:
            listing = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} does not fit this model:\n  {listing}"
            )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointWriteError: one of them could not be written.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(self._saving, e) from e
        self.check_saved()

    def close(self) -> None:
        self.manager.close()
        self._remove_partial()


def newest_metadata(workdir: str) -> dict[str, Any] | None:
    """The metadata of the newest checkpoint of `workdir` whose metadata reads
    (None when there is none), without its arrays; nothing is changed (a
    damaged checkpoint is left where it is, for `restore_newest`)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        for step in sorted(ckpt.all_steps(), reverse=True):
            with contextlib.suppress(CheckpointDamagedError):
                return ckpt.metadata(step)
        return None
    finally:
        ckpt.close()


def restore_newest(ckpt: Checkpointer, target: Any, check: Callable[[dict[str, Any]], None]) -> Any | None:
    """Restores the newest readable checkpoint into `target` (None when there is
    none), after `check` of its metadata (which raises to refuse it). A damaged
    one is set aside, with a one-line warning, and the next newest tried.

    Raises:
      CheckpointDamagedError: checkpoints exist but none can be read.
    """
    damaged = []
    for step in sorted(ckpt.all_steps(), reverse=True):
        try:
            check(ckpt.metadata(step))
            return ckpt.restore(target, step)
        except CheckpointDamagedError as e:
            moved = ckpt.set_aside(step)
            damaged.append(step)
            if jax.process_index() == 0:
                warn(f"{e}; set aside in {moved}, trying the previous checkpoint")
    if damaged:
        raise CheckpointDamagedError(
            f"no checkpoint of {ckpt.directory} can be read (steps {damaged}, set aside in "
            f"{os.path.join(os.path.dirname(ckpt.directory), DAMAGED_DIR)}); run the same command again to start "
            f"from step 0"
        )
    return None
