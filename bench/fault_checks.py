"""What the fault checks cost: checkpoint save and restore with and without them,
and the train step and its log with and without the on-device divergence check.

    python bench/fault_checks.py --models cifar_resnet20 resnet50 --repeats 3

* save: `Checkpointer.save` + `wait` (waits for the previous save, checks the
  free space, names a failed write) against Orbax's ``CheckpointManager.save``
  + ``wait_until_finished`` alone, on the same state; and the part the loop
  waits for (``save`` returning) against Orbax's default of temporary folders
  made by a thread of their own;
* restore: `restore_newest` (metadata read, resume check, shape check, read
  errors turned into one line) against ``CheckpointManager.restore`` alone;
* step: `steps.train_step` with its ``diverged`` output against the same step
  with that output dropped (XLA then removes the comparison), batch 128 (32 for
  ImageNet-sized models). (The log's sums, measured here until 860d72c, are now
  added inside the compiled step: bench/loop_overhead.py.)

Prints one JSON line per model; docs/faults.md holds the figures.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/fault_checks.py")

import functools
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import bench  # noqa: E402
from resnet_jax import models, parallel  # noqa: E402
from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.models.profile import default_resolution  # noqa: E402
from resnet_jax.training import optim, steps  # noqa: E402
from resnet_jax.training.checkpoint import Checkpointer, _to_tree, restore_newest  # noqa: E402
from resnet_jax.training.metadata import check_resumable, run_metadata  # noqa: E402
from resnet_jax.training.state import create_train_state  # noqa: E402


def _median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _blocking_seconds(start: Any, wait: Any, repeats: int) -> float:
    """The median time `start()` takes to return, the write it started waited for outside the timing."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        start()
        times.append(time.perf_counter() - t0)
        wait()
    return float(np.median(times))


def _checkpoint_costs(state: Any, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fault_checks_", ignore_cleanup_errors=True) as root:  # after a stop too
        return _checkpoint_costs_in(root, state, repeats)


def _checkpoint_costs_in(root: str, state: Any, repeats: int) -> dict[str, float]:
    metadata = run_metadata(default_config(), [f"class_{i}" for i in range(10)])
    ours = Checkpointer(os.path.join(root, "ours"), keep=2)
    plain = Checkpointer(os.path.join(root, "plain"), keep=2).manager
    # Orbax's default: a save's temporary folders made by a thread of their own
    # (ours and `plain` make them before `save` returns).
    handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, create=True)
    default = ocp.CheckpointManager(os.path.join(root, "default"), options=options, item_handlers=handlers)
    step = iter(range(1, 10_000))

    def start_ours() -> None:
        ours.save(state.replace(step=jnp.asarray(next(step))), metadata)

    def start_orbax(manager: ocp.CheckpointManager, save: Any = ocp.args.PyTreeSave) -> None:
        args = ocp.args.Composite(state=save(_to_tree(state)), metadata=ocp.args.JsonSave(metadata))
        manager.save(next(step), args=args, force=True)

    def save_ours() -> None:
        start_ours()
        ours.wait()

    def save_plain() -> None:
        start_orbax(plain)
        plain.wait_until_finished()

    save_ours(), save_plain(), start_orbax(default, ocp.args.StandardSave), default.wait_until_finished()  # warm up
    out = {"save_ms": _median_seconds(save_ours, repeats) * 1e3}
    out["save_plain_ms"] = _median_seconds(save_plain, repeats) * 1e3
    out["save_blocking_ms"] = _blocking_seconds(start_ours, ours.wait, repeats) * 1e3
    out["save_blocking_async_dirs_ms"] = (
        _blocking_seconds(lambda: start_orbax(default, ocp.args.StandardSave), default.wait_until_finished, repeats)
        * 1e3
    )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _to_tree(state))
    latest = plain.latest_step()

    check = functools.partial(check_resumable, current=metadata, where="")

    def restore_ours() -> None:
        jax.block_until_ready(restore_newest(ours, state, check))

    def restore_plain() -> None:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args))
        jax.block_until_ready(jax.tree_util.tree_leaves(plain.restore(latest, args=args)["state"]))

    restore_ours(), restore_plain()
    out["restore_ms"] = _median_seconds(restore_ours, repeats) * 1e3
    out["restore_plain_ms"] = _median_seconds(restore_plain, repeats) * 1e3
    ours.close(), plain.close(), default.close()
    return out


def _step_costs(model_name: str, state: Any, batch: dict[str, Any], repeats: int) -> dict[str, float]:
    c = default_config()
    options = steps.StepOptions(mean=tuple(c.data.mean), std=tuple(c.data.std), dtype=jnp.float32,
                                label_smoothing=0.0, ema_decay=0.0, max_loss=steps.divergence_bound(10),
                                make_tx=lambda hp: state.tx)  # fmt: skip
    step = functools.partial(steps.train_step, hp={}, options=options)
    checked = jax.jit(step)
    unchecked = jax.jit(lambda s, b: (lambda out: (out[0], {k: v for k, v in out[1].items() if k != "diverged"}))(
        step(s, b)))  # fmt: skip
    out = {}
    for name, fn in (("step_ms", checked), ("step_unchecked_ms", unchecked)):
        jax.block_until_ready(fn(state, batch))

        def run(fn: Any = fn) -> None:
            jax.block_until_ready([fn(state, batch) for _ in range(5)])

        out[name] = _median_seconds(run, repeats) / 5 * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    parser = bench.parser(__file__, __doc__)
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "resnet50"])
    parser.add_argument("--repeats", type=bench.positive, default=3)
    args = parser.parse_args(argv)
    mesh = parallel.make_mesh()
    for name in args.models:
        c = default_config()
        size = default_resolution(name)
        batch_size = 128 if size <= 64 else 32
        tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 100, 1000))
        state = create_train_state(models.create(name, num_classes=10), tx, size, [0], mesh)  # one network
        rng = np.random.default_rng(0)
        batch = {
            "image": jnp.asarray(rng.integers(0, 256, (batch_size, size, size, 3), np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32)),
        }
        state_mib = sum(x.nbytes for x in jax.tree_util.tree_leaves(_to_tree(state))) / 2**20
        result = {"model": name, "state_mib": round(state_mib, 1), "batch": batch_size}
        result["device"] = jax.devices()[0].platform
        result.update(_checkpoint_costs(state, args.repeats))
        result.update(_step_costs(name, state, batch, args.repeats))
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    bench.run(main)
