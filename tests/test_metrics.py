"""The training log: windows summed in the compiled step, read one window behind,
written to metrics.jsonl and TensorBoard."""

import glob
import json
import os
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tensorboard_events

from resnet_jax import parallel
from resnet_jax.errors import DivergedError
from resnet_jax.training import steps
from resnet_jax.training.compiled import compile_train_step
from resnet_jax.training.metrics import MetricWriter, TrainLog, accumulate


def _read(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _loss_step(state: jax.Array, batch: dict, hp: dict) -> tuple[jax.Array, dict]:
    """A step whose loss is the batch's mean "loss" (the state counts steps)."""
    loss = batch["loss"].mean()
    return state + 1, {"loss": loss, "accuracy": loss / 100, "diverged": loss > 50}


def _compiled(monkeypatch, step_fn, mesh):
    """The run's compiled step (one member, host batches) around `step_fn` instead of `steps.train_step`."""
    monkeypatch.setattr(steps, "train_step", lambda state, batch, hp, options: step_fn(state, batch, hp))
    return compile_train_step(SimpleNamespace(micro_batches=1), SimpleNamespace(mesh=mesh), {}, 1)


def test_windows_are_the_means_of_their_steps(tmp_path, monkeypatch):
    """Each record is the mean of its own window's steps, through the compiled
    step: every window starts from the same zeros, which the step (donating the
    state, not the window) leaves untouched."""
    writer = MetricWriter(str(tmp_path))
    log = TrainLog([writer], batch_size=8, learning_rates=lambda step: [0.1 * (step + 1)])
    train = _compiled(monkeypatch, _loss_step, parallel.make_mesh())
    state, step = jnp.zeros((), jnp.int32), 0  # a population of one member, held unstacked
    for window in [[1.0, 2.0, 3.0], [10.0, 20.0], [5.0]]:
        for loss in window:
            state, log.window = train(state, log.window, {"loss": np.full(8, loss, np.float32)})
            log.added()
            step += 1
        log.flush(step)
    assert len(_read(tmp_path)) == 2  # one window behind
    log.flush(step, now=True)
    writer.close()
    records = _read(tmp_path)
    assert [r["step"] for r in records] == [3, 5, 6]
    assert [r["steps"] for r in records] == [3, 2, 1]
    np.testing.assert_allclose([r["loss"] for r in records], [2.0, 15.0, 5.0])
    np.testing.assert_allclose([r["accuracy"] for r in records], [0.02, 0.15, 0.05])
    np.testing.assert_allclose([r["lr"] for r in records], [0.3, 0.5, 0.6])
    np.testing.assert_array_equal(np.asarray(log.window), np.zeros((1, 5)))
    assert int(state) == 6


def test_a_diverged_step_is_named(tmp_path):
    log = TrainLog([MetricWriter(str(tmp_path))], batch_size=8, learning_rates=lambda step: [0.1], max_loss=50.0)
    add = jax.jit(accumulate)
    for loss in [1.0, 2.0, 99.0, 3.0]:
        log.window = add(log.window, {"loss": jnp.float32(loss), "accuracy": 0.0, "diverged": jnp.bool_(loss > 50)})
        log.added()
    with pytest.raises(DivergedError, match="diverged at step 3: loss 99 exceeds 50"):
        log.flush(4, now=True)
    assert not os.path.exists(tmp_path / "metrics.jsonl") or _read(tmp_path) == []


def test_tensorboard_holds_the_records_as_tensorflow_reads_them(tmp_path):
    """One TensorBoard event per record, holding its scalars under ``split/name``,
    after the file's version; TensorFlow's reader checks the frames, and a
    changed byte is caught by their CRC."""
    import tensorflow as tf

    writer = MetricWriter(str(tmp_path))
    writer.write(10, "train", {"loss": 2.5, "lr": 0.1, "steps": 10})
    writer.write(2**40, "eval", {"top1": 0.75, "per_member": [{"top1": 0.7}]})
    writer.close()
    first, *events = tensorboard_events(str(tmp_path / "tensorboard"))
    assert first.file_version == "brain.Event:2" and not first.HasField("summary")
    got = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events]
    assert got == [(10, {"train/loss": 2.5, "train/lr": pytest.approx(0.1), "train/steps": 10.0}),
                   (2**40, {"eval/top1": 0.75})]  # fmt: skip
    assert events[0].wall_time == pytest.approx(time.time(), abs=60)
    (path,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 1  # a bit of the last event's value
    open(path, "wb").write(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        tensorboard_events(str(tmp_path / "tensorboard"))


def _device_bound_step(state: jax.Array, batch: dict, hp: dict) -> tuple[jax.Array, dict]:
    """A step of a fixed amount of device work (a chain of 64 x 64 matrix
    products) and no host callback (which XLA:CPU would run synchronously), so
    that it runs asynchronously, as a real step does."""
    work = jax.lax.fori_loop(0, 500, lambda i, v: jnp.tanh(v @ v), batch["x"])
    loss = batch["loss"].mean() + 0 * work.mean()
    return state + 1, {"loss": loss, "accuracy": loss / 100, "diverged": loss > 50}


@pytest.mark.parametrize("every", [1, 3, 12])
@pytest.mark.parametrize("bound", ["device", "host"])
def test_a_windows_seconds_are_the_time_it_trained(tmp_path, monkeypatch, bound, every):
    """Each record's seconds (and images/s) is the time its steps took, whether
    the device (a step of fixed work) or the host (a batch that takes 30 ms to
    load) is the slower, for windows of 1, 3 and 12 steps, the first one (whose
    call compiles the step) and the first after an evaluation (the host busy,
    the device idle) included: within each of the two phases of 12 steps, the
    windows split the phase's time (measured here: from its start, less the
    first call, to the end of its last step) as their steps do."""
    host_delay = 0.03 if bound == "host" else 0.0
    step_fn = _device_bound_step if bound == "device" else _loss_step
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: a step's work is not 8 threads on 2 cores
    train = _compiled(monkeypatch, step_fn, mesh)
    batch = {"x": np.full((8, 64, 64), 0.01, np.float32), "loss": np.full(8, 1.0, np.float32)}
    writer = MetricWriter(str(tmp_path))
    log = TrainLog([writer], batch_size=8, learning_rates=lambda step: [0.1], sharding=parallel.replicated(mesh))
    state, step = jax.device_put(jnp.zeros((), jnp.int32), parallel.replicated(mesh)), 0  # placed as a run's
    phases = []
    for _ in range(2):  # training, an evaluation, training again
        log.restart_clock()
        start, first_call = time.perf_counter(), None
        for _ in range(12):
            time.sleep(host_delay)  # the batch loading
            called = time.perf_counter()
            state, log.window = train(state, log.window, batch)
            log.added(1, time.perf_counter() - called)
            first_call = first_call or time.perf_counter() - called
            step += 1
            if step % every == 0:
                log.flush(step)
        log.flush(step, now=True)  # returns once the last step is done
        phases.append(time.perf_counter() - start - first_call)
        time.sleep(0.3)  # an evaluation: not training time
    writer.close()
    records = _read(tmp_path)
    assert [r["steps"] for r in records] == [every] * (24 // every)
    per_phase = 12 // every
    for phase, seconds in enumerate(phases):
        mine = records[phase * per_phase : (phase + 1) * per_phase]
        assert sum(r["seconds"] for r in mine) == pytest.approx(seconds, rel=0.1, abs=0.05)
        for r in mine:  # a busy machine moves a step's time by 2x; timing the hand-over instead is off by 5-12x
            assert 1 / 3 <= r["seconds"] / (seconds * r["steps"] / 12) <= 3, (r, phases, records)
            assert r["images_per_sec"] == pytest.approx(8 * r["steps"] / r["seconds"])


def test_an_evaluations_seconds_leave_its_compilation_out():
    """The first evaluation compiles its step: its seconds leave the compilation
    out (the training before it was waited for by the log's flush, so it
    absorbs no training either)."""
    from resnet_jax.training.loop import _evaluate_all

    fresh = float(time.time_ns() % 997)  # a program no cache holds: the first call compiles it

    @jax.jit
    def work(x):
        v = jax.lax.fori_loop(0, 500, lambda i, v: jnp.tanh(v @ v), x + fresh)
        for k in range(1, 41):  # 40 more products to compile (0.2 s, not 0.05: well above the bound below)
            v = jnp.tanh(v @ v + k)
        return v.sum()

    def evaluate(variables, batches):
        return [{"count": 8, "loss": sum(float(work(b["x"])) for b in batches)}]

    state = SimpleNamespace(variables=lambda ema=False: None, ema_params=None)
    pipeline = SimpleNamespace(eval_batches=lambda: iter([{"x": np.full((8, 64, 64), 0.01, np.float32)}] * 2))
    from resnet_jax.training.metrics import compile_seconds

    t0, compiled = time.perf_counter(), compile_seconds()
    first = _evaluate_all(state, evaluate, pipeline, None)[0]["eval"]
    wall, compiled = time.perf_counter() - t0, compile_seconds() - compiled
    assert compiled > 0.05 and first["seconds"] == pytest.approx(wall - compiled, abs=0.01), (first, wall, compiled)
    assert first["images_per_sec"] == pytest.approx(8 / first["seconds"])
