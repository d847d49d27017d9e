"""Today's recipes: LARS and LAMB with their masks, BCE, the schedules, EMA every
N steps, the batch augmentations inside the step, and every recipe config
running on tiny images."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import ROOT, tiny_config

from resnet_jax.config import default_config
from resnet_jax.data import batch_augment
from resnet_jax.training import optim, steps
from resnet_jax.training.loop import train_and_evaluate

PARAMS = {"conv": {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4)}, "bn": {"scale": jnp.array([1.0, 0.5, 2.0])}}
GRADS = {"conv": {"kernel": jnp.linspace(0.3, -0.2, 12).reshape(3, 4)}, "bn": {"scale": jnp.array([0.1, -0.2, 0.3])}}


def one_update(tx):
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    return updates


def recipe(optimizer, exclude=True, wd=0.01):
    c = default_config()
    c.optimizer, c.weight_decay, c.weight_decay_exclude_bn_bias, c.momentum = optimizer, wd, exclude, 0.9
    return c


def test_lars_is_optax_lars_with_batch_norm_and_bias_left_out():
    mask = {"conv": {"kernel": True}, "bn": {"scale": False}}
    ours = one_update(optim.make_optimizer(recipe("lars"), 0.1))
    ref = one_update(optax.lars(0.1, 0.01, mask, 0.001, 0.0, mask, 0.9))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # The 1-D scale: plain momentum SGD, no decay, no trust ratio: -lr * g on the first step.
    np.testing.assert_allclose(ours["bn"]["scale"], -0.1 * GRADS["bn"]["scale"], rtol=1e-6)
    # The kernel: lr * trust ratio 0.001 * |w| / |g + wd w| on g + wd w.
    w, g = PARAMS["conv"]["kernel"], GRADS["conv"]["kernel"] + 0.01 * PARAMS["conv"]["kernel"]
    want = -0.1 * 0.001 * jnp.linalg.norm(w) / jnp.linalg.norm(g) * g
    np.testing.assert_allclose(ours["conv"]["kernel"], want, rtol=1e-5)


def test_lamb_is_optax_lamb_and_adapts_only_where_it_decays():
    everything = one_update(optim.make_optimizer(recipe("lamb", exclude=False), 0.01))
    ref = one_update(optax.lamb(0.01, weight_decay=0.01))
    for a, b in zip(jax.tree_util.tree_leaves(everything), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    masked = one_update(optim.make_optimizer(recipe("lamb"), 0.01))
    np.testing.assert_allclose(masked["conv"]["kernel"], ref["conv"]["kernel"], rtol=1e-6)
    adam = one_update(optax.adam(0.01, eps=1e-6))  # no decay, no trust ratio on the 1-D scale
    np.testing.assert_allclose(masked["bn"]["scale"], adam["bn"]["scale"], rtol=1e-6)
    assert not np.allclose(masked["bn"]["scale"], ref["bn"]["scale"])


def test_bce_is_timms():
    from timm.loss import BinaryCrossEntropy

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 5)).astype(np.float32) * 3, rng.integers(0, 5, 6)
    for smoothing in (0.0, 0.1):
        ours = jnp.mean(steps.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing))
        ref = BinaryCrossEntropy(smoothing=smoothing)(torch.tensor(logits), torch.tensor(labels))
        assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(6, 5)), jnp.float32))
    ref = BinaryCrossEntropy()(torch.tensor(logits), torch.tensor(np.asarray(soft)))
    assert float(jnp.mean(steps.binary_cross_entropy(jnp.asarray(logits), soft))) == pytest.approx(float(ref), 1e-5)


@pytest.mark.parametrize("schedule", ["piecewise", "cosine", "onecycle", "polynomial", "constant"])
def test_schedules_equal_optax_and_run_on_the_host_and_traced(schedule):
    c = default_config()
    c.lr_schedule, c.warmup_epochs, c.learning_rate, c.lr_end, c.lr_boundaries = schedule, 2, 0.4, 1e-3, (300, 600)
    spe, total, warm = 100, 1000, 200
    ref = {
        "piecewise": optax.piecewise_constant_schedule(0.4, {300: 0.1, 600: 0.1}),
        "cosine": optax.warmup_cosine_decay_schedule(0.0, 0.4, warm, total, 0.0),
        "onecycle": optax.join_schedules([optax.linear_schedule(0.4 / 25, 0.4, warm),
                                          optax.linear_schedule(0.4, 0.0, total - warm)], [warm]),
        "polynomial": optax.join_schedules([optax.linear_schedule(0.0, 0.4, warm),
                                            optax.polynomial_schedule(0.4, 1e-3, 2.0, total - warm)], [warm]),
        "constant": optax.constant_schedule(0.4),
    }[schedule]  # fmt: skip
    ours = optim.learning_rate_schedule(c, spe, total)
    traced = jax.jit(jax.vmap(lambda s, lr: optim.learning_rate_schedule(c, spe, total, {"learning_rate": lr})(s),
                              in_axes=(0, None)))  # fmt: skip
    points = np.array([0, 1, 150, 199, 200, 201, 299, 300, 450, 600, 999, 1000])
    want = np.array([float(ref(s)) for s in points])
    got = np.array([ours(int(s)) for s in points])
    assert isinstance(ours(5), (float, np.floating, np.ndarray)) and not isinstance(ours(5), jax.Array)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(traced(jnp.asarray(points), 0.4), want, rtol=1e-5, atol=1e-7)


def test_ema_every_n_steps():
    from resnet_jax import parallel
    from resnet_jax.models import create
    from resnet_jax.training.state import create_train_state

    model = create("cifar_resnet20", num_classes=3, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))
    state = create_train_state(model, optax.sgd(0.1), 8, 0, parallel.make_mesh(), use_ema=True)
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    ema = state.ema_params
    for k in range(1, 7):
        state = state.apply_gradients(grads, state.batch_stats, 0.5, ema_every=3)
        if k % 3 == 0:
            ema = jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, ema, state.params)
        for a, b in zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(ema)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_the_batch_augmentations_run_inside_the_step_and_mix_the_targets(image_folder, tmp_path):
    c = tiny_config(image_folder, **{"data.pipeline": "device"})
    c.auto_augment, c.random_erasing, c.mixup_alpha, c.cutmix_alpha, c.label_smoothing = "trivial", 0.5, 0.2, 1.0, 0.1
    transform = batch_augment.batch_transform(c, 3)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8))
    out, targets = jax.jit(transform)(jax.random.key(1), images, jnp.arange(8) % 3, {"label_smoothing": 0.1})
    assert out.dtype == jnp.float32 and targets.shape == (8, 3)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert float(targets.min()) >= 0.1 / 3 - 1e-6 and not np.array_equal(np.asarray(out), np.asarray(images))
    assert batch_augment.batch_transform(tiny_config(image_folder), 3) is None
    results = train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / "w"))
    assert np.isfinite(results["eval"]["loss"])


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


RECIPES = ["imagenet_resnet50_tv2", "imagenet_resnet50_rsb_a1", "imagenet_resnet50_rsb_a2", "imagenet_resnet50_rsb_a3",
           "imagenet_resnet50_mlperf", "imagenet_resnet50_ffcv"]  # fmt: skip


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_config_runs_two_steps_on_tiny_images(name, image_folder, tmp_path):
    """The recipe with its ingredients, on a small network and 16-pixel images
    (its resolutions scaled by 16 / 224)."""
    c = load_config(name)
    text = " ".join(open(os.path.join(ROOT, "configs", f"{name}.py")).read().split())
    assert "Not yet a result of this package" in text and "Source:" in text
    c.model, c.num_train_steps, c.batch_size, c.eval_batch_size = "cifar_resnet20", 2, 16, 16
    c.model_kwargs.stage_sizes, c.model_kwargs.stage_widths = (1, 1, 1), (4, 8, 16)
    c.half_precision, c.async_checkpoints, c.log_every_steps = False, False, 1
    d = c.data
    scale = lambda px: max(8, round(px * 16 / 224))  # noqa: E731
    d.path, d.eval_split, d.image_size, d.cache, d.shuffle_buffer, d.workers = image_folder, "test", 16, False, 64, 0
    d.train_image_size = scale(d.train_image_size) if d.train_image_size else 0
    if d.progressive_resizing:
        low, high, start, end = d.progressive_resizing.split(":")
        d.progressive_resizing = f"{scale(int(low))}:{scale(int(high))}:0:1"
    results = train_and_evaluate(c, str(tmp_path / name))
    assert np.isfinite(results["eval"]["loss"]) and results["eval"]["count"] == 15
