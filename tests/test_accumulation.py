"""Gradient accumulation (``gradient_accumulation_steps`` = k): k micro-batches
one after another, then one update, train what k devices with per-device batch
norm train (`resnet_jax.training.steps.train_step`)."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import tiny_config

from resnet_jax import parallel
from resnet_jax.errors import ConfigError
from resnet_jax.training import config_check, loop, population
from resnet_jax.training.metrics import ACCURACY, LOSS, empty_window

STEPS = 3  # the fixture folder's 48 images make 3 batches of 16: one epoch


def config_of(folder, pipeline: str = "device", **fields):
    """`tiny_config` on `folder` with mixup on (one draw a chunk), momentum and
    a warm-up to a cosine decay (the schedule's count shows in every update),
    then `fields`."""
    return tiny_config(folder, mixup_alpha=0.8, lr_schedule="cosine", warmup_epochs=1.0,
                       **{"data.pipeline": pipeline, **fields})  # fmt: skip


def run(config, devices: int, member_batching: str = "auto", steps_per_call: int = 1, micro_loop: str = "auto"):
    """`STEPS` steps of `config`'s compiled step (`loop.setup`, the micro-batches
    run as `micro_loop` says: `steps.ACCUMULATION_LOOPS`) on the first `devices`
    devices from its initial state: (the state on the host, each call's
    [members, metrics] log window, the head's kernel before training)."""
    mesh = parallel.make_mesh(jax.devices()[:devices])
    built = loop.setup(config.copy_and_resolve_references(), mesh)
    built = dataclasses.replace(built, options=dataclasses.replace(built.options, micro_loop=micro_loop))
    assert built.pipeline.steps_per_epoch == STEPS
    train = built.compile_step(member_batching, steps_per_call)
    state, windows = built.state, []
    head = np.asarray(state.params["head"]["kernel"])  # read before the first call donates the state
    items = built.pipeline.train_epoch(0)
    for _ in range(STEPS // steps_per_call):
        state, window = train(state, empty_window(built.members.size, parallel.replicated(mesh)), next(items))
        windows.append(np.asarray(window))
    return jax.device_get(state), np.stack(windows), head


def leaves(state):
    """The state's arrays by path (step, parameters, batch statistics, optimiser, EMA)."""
    fields = ("step", "params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats")
    tree = {k: getattr(state, k) for k in fields}
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same(a, b, initial_head=None) -> float:
    """Every array of states `a` and `b` equal to 1e-5; returns the largest
    difference. `initial_head`: the head's kernel before training, which `a`'s
    must differ from (the comparison is not of two untrained states)."""
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys() and len(la) > 20
    worst = 0.0
    for key, x in la.items():
        np.testing.assert_allclose(x, lb[key], rtol=0, atol=1e-5, err_msg=key)
        worst = max(worst, float(np.max(np.abs(x - lb[key]), initial=0.0)))
    if initial_head is not None:
        assert np.max(np.abs(np.asarray(a.params["head"]["kernel"]) - initial_head)) > 1e-3
    return worst


@pytest.mark.parametrize("pipeline, micro_loop", [("tfds", "auto"), ("device", "scan")])
def test_four_micro_batches_on_one_device_train_what_four_devices_do(image_folder, pipeline, micro_loop):
    """source_devices=4 (BN groups and mixing chunks of 4 images): one device
    with 4 micro-batches equals 4 devices with 1, array for array of the
    state, after 3 updates; the micro-batches unrolled (the CPU's default) on
    tf.data, a while loop on the on-device pipeline, whose 3 steps are one call
    (steps_per_call=3). The logged loss and accuracy sums agree."""
    config = config_of(image_folder, pipeline, source_devices=4)
    accumulated = config_of(image_folder, pipeline, source_devices=4, gradient_accumulation_steps=4)
    one, one_windows, head = run(accumulated, 1, steps_per_call=3 if pipeline == "device" else 1, micro_loop=micro_loop)
    four, four_windows, _ = run(config, 4)
    assert int(one.step) == int(four.step) == STEPS  # a step is one update
    print(f"largest difference: {assert_same(one, four, head):.2e}")
    for column in (LOSS, ACCURACY):  # the log window's sums of the 3 steps
        np.testing.assert_allclose(one_windows[..., column].sum(), four_windows[..., column].sum(), atol=1e-5)


def test_a_population_with_ema_updates_once_a_step(image_folder):
    """Two learning rates, vmapped, with EMA and mixup, k=2 in a while loop on
    2 devices (each micro-batch spread over both) equal the same population
    with k=1, looped, on one device with BN groups and mixing chunks of B/2
    (source_devices=2): one optimiser update, one schedule count and one EMA
    update per step, the micro-batches inside each member's step."""
    fields = {"source_devices": 2, "ema_decay": 0.5, "sweep": "learning_rate=0.02,0.1"}
    config = config_of(image_folder, gradient_accumulation_steps=2, **fields)
    assert population.from_config(config).size == 2
    accumulated, _, head = run(config, 2, member_batching="vmap", micro_loop="scan")
    plain, _, _ = run(config_of(image_folder, **fields), 1, member_batching="loop")
    assert np.all(np.asarray(accumulated.step) == STEPS)  # a step is one update
    print(f"largest difference: {assert_same(accumulated, plain, head):.2e}")
    kernel = accumulated.params["head"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])  # the members differ


def test_layouts_that_cannot_run_are_refused_before_any_work(image_folder):
    """`config_check.check` refuses micro-batches that cannot spread over the 8
    devices (16 images in 4 micro-batches of 4) and the layout's own errors
    (`batch_layout.from_config`); the compiled step refuses the former too, at its first call."""
    uneven = config_of(image_folder, gradient_accumulation_steps=4)
    message = "micro-batches of 4 images, which do not divide over 8 devices"
    with pytest.raises(ConfigError, match=message):
        config_check.check(uneven)
    with pytest.raises(ConfigError, match=message):
        run(uneven, 8)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4 must divide source_devices=2"):
        config_check.check(config_of(image_folder, source_devices=2, gradient_accumulation_steps=4))
    config_check.check(config_of(image_folder, source_devices=2, gradient_accumulation_steps=2))  # 8 a micro-batch
