"""The training log: windows summed in the compiled step, read one window behind,
written to metrics.jsonl and TensorBoard."""

import glob
import json
import os
import struct
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.errors import DivergedError
from resnet_jax.training.compiled import compile_train_step
from resnet_jax.training.metrics import MetricWriter, TrainLog, accumulate


def _events(folder: str) -> list:
    """The events of the TensorBoard file in `folder` (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    (path,) = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    data, out, i = open(path, "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out


def _read(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _loss_step(state: jax.Array, batch: dict, hp: dict) -> tuple[jax.Array, dict]:
    """A step whose loss is the batch's mean "loss" (the state counts steps)."""
    loss = batch["loss"].mean()
    return state + 1, {"loss": loss, "accuracy": loss / 100, "diverged": loss > 50}


def test_windows_are_the_means_of_their_steps(tmp_path):
    """Each record is the mean of its own window's steps, through the compiled
    step: every window starts from the same zeros, which the step (donating the
    state, not the window) leaves untouched."""
    writer = MetricWriter(str(tmp_path))
    log = TrainLog([writer], batch_size=8, learning_rates=lambda step: [0.1 * (step + 1)])
    train = compile_train_step(_loss_step, SimpleNamespace(mesh=parallel.make_mesh()))
    state, step = jnp.zeros((), jnp.int32), 0
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
    np.testing.assert_array_equal(np.asarray(log.window), np.zeros(5))
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


def test_tensorboard_holds_the_records(tmp_path):
    """One TensorBoard event per record, holding its scalars under ``split/name``."""
    writer = MetricWriter(str(tmp_path))
    writer.write(10, "train", {"loss": 2.5, "lr": 0.1, "steps": 10})
    writer.write(20, "eval", {"top1": 0.75, "per_seed": [{"top1": 0.7}]})
    writer.close()
    events = [e for e in _events(str(tmp_path / "tensorboard")) if e.HasField("summary")]
    got = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events]
    assert got == [(10, {"train/loss": 2.5, "train/lr": pytest.approx(0.1), "train/steps": 10.0}),
                   (20, {"eval/top1": 0.75})]  # fmt: skip
