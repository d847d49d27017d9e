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
from conftest import ROOT, tiny_config

from resnet_jax.augment import batch as batch_augment
from resnet_jax.config import default_config
from resnet_jax.data import resolution
from resnet_jax.errors import ConfigError
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


def reference_lars(params, grads_per_step, lrs, wd, eeta, eps, momentum, nesterov, skip):
    """A NumPy transcription of MLPerf's reference LARS (mlcommons/training at db5b42e0,
    image_classification/tensorflow2/lars_optimizer.py: `compute_lr`, `_resource_apply_dense`),
    with TF's sign convention for the momentum slot; `skip` names the skip_list's variables."""
    var = {k: np.array(v, np.float64) for k, v in params.items()}
    mom = {k: np.zeros_like(v) for k, v in var.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for k in var:
            grad = np.array(grads[k], np.float64)
            scaled_lr = lr
            if k not in skip:
                w_norm, g_norm = np.linalg.norm(var[k]), np.linalg.norm(grad)
                trust = eeta * w_norm / (g_norm + wd * w_norm + eps) if w_norm > 0 and g_norm > 0 else 1.0
                scaled_lr = lr * trust
                grad = grad + wd * var[k]
            mom[k] = mom[k] * momentum - grad * scaled_lr
            var[k] = var[k] + mom[k] * momentum - grad * scaled_lr if nesterov else var[k] + mom[k]
    return var


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_is_mlperfs_reference_lars(nesterov):
    """Four steps of a changing learning rate (the momentum holds lr-scaled steps in the reference), batch
    norm left out of decay and trust ratio, a zero gradient (trust ratio 1); optax's `lars` is another formula."""
    rng = np.random.default_rng(0)
    params = {"conv": rng.normal(size=(3, 4)).astype(np.float32), "bn": np.array([1.0, 0.5, 2.0], np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) * 0.1 for k, v in params.items()} for _ in range(4)]
    grads[2]["conv"] = np.zeros((3, 4), np.float32)
    lrs = [0.5, 2.0, 3.0, 1.0]
    c = recipe("lars", wd=2e-4)
    c.nesterov, c.lars_trust_coefficient, c.lars_eps = nesterov, 0.001, 1e-7
    tx = optim.make_optimizer(c, lambda step: jnp.asarray(lrs)[step])
    ours, state = {k: jnp.asarray(v) for k, v in params.items()}, None
    state = tx.init(ours)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = optax.apply_updates(ours, updates)
    want = reference_lars(params, grads, lrs, 2e-4, 0.001, 1e-7, 0.9, nesterov, skip={"bn"})
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    optax_lars = optax.lars(lambda step: jnp.asarray(lrs)[step], 2e-4, {"conv": True, "bn": False}, 0.001, 1e-7,
                            {"conv": True, "bn": False}, 0.9, nesterov)  # fmt: skip
    other, state = {k: jnp.asarray(v) for k, v in params.items()}, None
    state = optax_lars.init(other)
    for g in grads:
        updates, state = optax_lars.update({k: jnp.asarray(v) for k, v in g.items()}, state, other)
        other = optax.apply_updates(other, updates)
    assert not np.allclose(np.asarray(other["conv"]), want["conv"], rtol=1e-5, atol=1e-7)


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


def test_lamb_clips_the_global_norm_as_timms_lamb():
    """timm's Lamb (max_grad_norm=1.0, its default; no decay or trust ratio on the 1-D group) against ours with
    max_grad_norm=1.0 over five steps whose gradients' global norm is above 1 and below it."""
    torch = pytest.importorskip("torch")
    Lamb = pytest.importorskip("timm.optim").Lamb

    rng = np.random.default_rng(1)
    params = {"conv": rng.normal(size=(4, 6)).astype(np.float32), "bn": rng.normal(size=(6,)).astype(np.float32)}
    scales = [3.0, 0.05, 2.0, 0.1, 5.0]
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) * s for k, v in params.items()} for s in scales]
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    groups = [{"params": [torch_params["conv"]], "weight_decay": 0.01}, {"params": [torch_params["bn"]],
                                                                         "weight_decay": 0.0}]  # fmt: skip
    ref = Lamb(groups, lr=5e-3, max_grad_norm=1.0)
    c = recipe("lamb", wd=0.01)
    c.max_grad_norm = 1.0
    tx = optim.make_optimizer(c, 5e-3)
    ours = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(ours)
    for g in grads:
        for k, p in torch_params.items():
            p.grad = torch.tensor(g[k])
        ref.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = optax.apply_updates(ours, updates)
        for k, p in torch_params.items():
            np.testing.assert_allclose(np.asarray(ours[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    c.max_grad_norm = 0.0  # without the clip the same steps end elsewhere
    tx = optim.make_optimizer(c, 5e-3)
    other = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(other)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, other)
        other = optax.apply_updates(other, updates)
    assert not np.allclose(np.asarray(other["bn"]), np.asarray(ours["bn"]), rtol=1e-4)


def test_bce_target_threshold_is_timms():
    torch = pytest.importorskip("torch")
    BinaryCrossEntropy = pytest.importorskip("timm.loss").BinaryCrossEntropy

    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(6, 5)).astype(np.float32) * 3, rng.integers(0, 5, 6)
    soft = 0.7 * np.eye(5, dtype=np.float32)[labels] + 0.3 * np.eye(5, dtype=np.float32)[labels[::-1]]
    for threshold in (0.2, 0.5):
        ref = BinaryCrossEntropy(smoothing=0.0, target_threshold=threshold)(torch.tensor(logits), torch.tensor(soft))
        ours = jnp.mean(steps.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(soft), 0.0, threshold))
        assert float(ours) == pytest.approx(float(ref), rel=1e-5)
        ref = BinaryCrossEntropy(smoothing=0.1, target_threshold=threshold)(torch.tensor(logits), torch.tensor(labels))
        ours = jnp.mean(steps.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1, threshold))
        assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    unthresholded = jnp.mean(steps.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(soft)))
    assert float(unthresholded) != pytest.approx(float(ours), rel=1e-3)


def test_bce_is_timms():
    torch = pytest.importorskip("torch")
    BinaryCrossEntropy = pytest.importorskip("timm.loss").BinaryCrossEntropy

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
    c.warmup_start_factor = 1 / 25
    spe, total, warm = 100, 1000, 200
    ref = {
        "piecewise": optax.piecewise_constant_schedule(0.4, {300: 0.1, 600: 0.1}),
        "cosine": optax.warmup_cosine_decay_schedule(0.4 / 25, 0.4, warm, total, 1e-3),
        "onecycle": optax.join_schedules([optax.linear_schedule(0.4 / 25, 0.4, warm),
                                          optax.linear_schedule(0.4, 0.0, total - warm)], [warm]),
        "polynomial": optax.join_schedules([optax.linear_schedule(0.4 / 25, 0.4, warm),
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


def test_per_epoch_schedule_is_torchvisions_warmup_and_cosine():
    """torchvision's train.py: LinearLR(start_factor=0.01, total_iters=5) then CosineAnnealingLR(T_max=epochs - 5),
    stepped once an epoch; the rate within each epoch is the one set at its start."""
    torch = pytest.importorskip("torch")
    c = default_config()
    c.lr_schedule, c.learning_rate, c.warmup_epochs, c.warmup_start_factor = "cosine", 0.5, 5, 0.01
    c.lr_step_every_epoch = True
    epochs, spe = 12, 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=5)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - 5)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[5])
    ours = optim.learning_rate_schedule(c, spe, epochs * spe)
    for epoch in range(epochs):
        want = opt.param_groups[0]["lr"]
        got = [float(ours(epoch * spe + k)) for k in range(spe)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=f"epoch {epoch}")
        opt.step()
        sched.step()


def test_onecycle_is_ffcvs_cyclic_schedule():
    """ffcv-imagenet's get_cyclic_lr (np.interp over [0, lr_peak_epoch, epochs] -> [1e-4 lr, lr, 0]) and its
    per-iteration interpolation between consecutive epochs, against the FFCV config's schedule."""
    c = load_config("imagenet_resnet50_ffcv")
    epochs, spe = 6, 5
    c.num_epochs = epochs
    ours = optim.learning_rate_schedule(c, spe, epochs * spe)
    cyclic = lambda e: np.interp([e], [0, 2, epochs], [1e-4 * 1.7, 1.7, 0])[0]  # noqa: E731
    for epoch in range(epochs):
        want = np.interp(np.arange(spe), [0, spe], [cyclic(epoch), cyclic(epoch + 1)])
        got = [float(ours(epoch * spe + k)) for k in range(spe)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"epoch {epoch}")


def test_ema_every_n_steps():
    from resnet_jax import parallel
    from resnet_jax.models import create
    from resnet_jax.training.state import create_train_state

    model = create("cifar_resnet20", num_classes=3, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))
    state = create_train_state(model, optax.sgd(0.1), 8, [0], parallel.make_mesh(), use_ema=True)
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    ema = state.ema_params
    for k in range(1, 7):
        state = state.apply_gradients(grads, state.batch_stats, 0.5, ema_every=3)
        if k % 3 == 0:
            ema = jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, ema, state.params)
        for a, b in zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(ema)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_the_batch_augmentations_augment_the_images_and_mix_the_targets(image_folder):
    """The batch transform alone; inside a training step: the tv2 recipe's run below."""
    c = tiny_config(image_folder, **{"data.pipeline": "device"})
    c.auto_augment, c.random_erasing, c.mixup_alpha, c.cutmix_alpha, c.label_smoothing = "trivial", 0.5, 0.2, 1.0, 0.1
    transform = batch_augment.batch_transform(c, 3)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8))
    out, targets = jax.jit(transform)(jax.random.key(1), images, jnp.arange(8) % 3, {"label_smoothing": 0.1})
    assert out.dtype == jnp.float32 and targets.shape == (8, 3)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert float(targets.min()) >= 0.1 / 3 - 1e-6 and not np.array_equal(np.asarray(out), np.asarray(images))
    assert batch_augment.batch_transform(tiny_config(image_folder), 3) is None


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


RECIPES = ["imagenet_resnet50_tv2", "imagenet_resnet50_rsb_a1", "imagenet_resnet50_rsb_a2", "imagenet_resnet50_rsb_a3",
           "imagenet_resnet50_mlperf", "imagenet_resnet50_ffcv"]  # fmt: skip
RUN = ["imagenet_resnet50_tv2", "imagenet_resnet50_rsb_a1"]  # between them every batch augmentation, SGD and LAMB


def shrunk(c, image_folder):
    """Recipe `c` on a small network and 16-pixel images (its resolutions scaled by 16 / 224), two steps."""
    c.model, c.num_train_steps, c.batch_size, c.eval_batch_size = "cifar_resnet20", 2, 16, 16
    c.model_kwargs.stage_sizes, c.model_kwargs.stage_widths = (1, 1, 1), (4, 8, 16)
    c.half_precision, c.async_checkpoints, c.log_every_steps = False, False, 1
    c.source_devices = 2  # two batch-norm groups and mixing draws, as the recipe's per-GPU ones
    d = c.data
    scale = lambda px: max(8, round(px * 16 / 224))  # noqa: E731
    d.path, d.eval_split, d.image_size, d.cache, d.shuffle_buffer, d.workers = image_folder, "test", 16, False, 64, 0
    d.train_image_size = scale(d.train_image_size) if d.train_image_size else 0
    if d.progressive_resizing:
        low, high, start, end = d.progressive_resizing.split(":")
        d.progressive_resizing = f"{scale(int(low))}:{scale(int(high))}:0:1"
    return c


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_builds_its_schedule_optimizer_sizes_and_batch_augmentations(name, image_folder):
    """What the training loop builds from the recipe's config, at the recipe's own values: the schedule over its
    epochs (peak at its learning rate), one optimizer step under it, the training sizes of its epochs, and its
    batch augmentations (two recipes also train two steps below)."""
    c = load_config(name)
    text = " ".join(open(os.path.join(ROOT, "configs", f"{name}.py")).read().split())
    assert "Not yet a result of this package" in text and "Source:" in text
    spe, total = 10, 10 * c.num_epochs
    schedule = optim.learning_rate_schedule(c, spe, total)
    rates = np.array([float(schedule(s)) for s in range(0, total, spe)])
    assert np.all(np.isfinite(rates)) and np.all(rates >= 0)
    np.testing.assert_allclose(rates.max(), c.learning_rate, rtol=0.05)  # warm-up reaches the peak
    assert rates[-1] < 0.1 * c.learning_rate  # and the schedule decays
    tx = optim.make_optimizer(c, schedule)
    params = {"conv": {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4)}, "bn": {"scale": jnp.ones(3)}}
    state = tx.init(params)
    for _ in range(2 * spe):  # past the first epoch's rate
        updates, state = tx.update(GRADS, state, params)
    for leaf in jax.tree_util.tree_leaves(updates):
        assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0
    sizes = resolution.training_sizes(c.data, c.num_epochs)
    ramp = resolution.parse_ramp(c.data.progressive_resizing)
    if ramp:  # FFCV's: from its low resolution to its high one
        assert (sizes[0], sizes[-1]) == (ramp.min_res, ramp.max_res) and ramp.min_res < ramp.max_res
    else:
        assert sizes == [c.data.train_image_size or c.data.image_size]
    small = shrunk(c, image_folder)
    transform = batch_augment.batch_transform(small, 3)
    mixes, augments = small.mixup_alpha > 0 or small.cutmix_alpha > 0, bool(small.auto_augment)
    assert (transform is None) == (not mixes and not augments and not small.random_erasing)


@pytest.mark.parametrize("name", RUN)
def test_recipe_runs_two_steps_on_tiny_images(name, image_folder, tmp_path):
    """The recipe with all its ingredients in the training step, on a small network and 16-pixel images."""
    results = train_and_evaluate(shrunk(load_config(name), image_folder), str(tmp_path / name))
    assert np.isfinite(results["eval"]["loss"]) and results["eval"]["count"] == 15


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_data_interpolation_is_torchvisions_eval_resize(interpolation):
    """data.interpolation on both pipelines' evaluation crop (Pillow for grain, tf.image for tfds) against
    torchvision's Resize(58, <mode>) + CenterCrop(56) on the same image: the same interpolation within a grey
    level or a few on average, the other one far off."""
    import io

    from PIL import Image

    T = pytest.importorskip("torchvision.transforms")

    from resnet_jax.data import augment

    y, x = np.mgrid[:90, :120]
    image = Image.fromarray(np.stack([np.sin(x / 3) * 120 + 128, np.cos(y / 5) * 120 + 128, (x * y) % 256], -1)
                            .clip(0, 255).astype(np.uint8))  # fmt: skip
    encoded = io.BytesIO()
    image.save(encoded, "PNG")
    tf_crop = pytest.importorskip("tensorflow") and augment.tf_center_crop
    other = {"bilinear": "bicubic", "bicubic": "bilinear"}[interpolation]
    ref = np.asarray(T.Compose([T.Resize(58, T.InterpolationMode(interpolation)), T.CenterCrop(56)])(image), float)
    for crop in (lambda i: augment.pil_center_crop(image, 56, 56 / 58, i),
                 lambda i: np.asarray(tf_crop(encoded.getvalue(), 56, 56 / 58, i))):  # fmt: skip
        assert np.abs(crop(interpolation) - ref).mean() < 0.1
        assert np.abs(crop(other) - ref).mean() > 1.0
    with pytest.raises(ConfigError, match="data.interpolation='nearest'"):
        augment.pil_center_crop(image, 56, 56 / 58, "nearest")


def test_ghost_batch_norm_is_torchs_batch_norm_on_each_group():
    """BatchNorm(group_size=4) on 16 examples: each group of 4 normalised as torch.nn.BatchNorm2d normalises one
    process's 4 (train mode); the running averages the mean of the 4 groups' torch buffers after the step."""
    torch = pytest.importorskip("torch")
    from resnet_jax.models.blocks import BatchNorm

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(16, 5, 5, 3)) * np.array([1.0, 3.0, 0.5]) + np.array([0.0, 2.0, -1.0])).astype(np.float32)
    bn = BatchNorm(use_running_average=False, group_size=4)
    variables = bn.init(jax.random.key(0), jnp.asarray(x))
    variables = {"params": {"scale": jnp.array([1.0, 0.5, 2.0]), "bias": jnp.array([0.1, 0.0, -0.3])},
                 "batch_stats": variables["batch_stats"]}  # fmt: skip
    out, updates = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    means, variances = [], []
    for k in range(4):
        ref = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5)
        ref.weight.data, ref.bias.data = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.1, 0.0, -0.3])
        want = ref(torch.tensor(x[4 * k : 4 * k + 4].transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(out[4 * k : 4 * k + 4]), want, rtol=1e-4, atol=1e-5)
        means.append(ref.running_mean.numpy())
        variances.append(ref.running_var.numpy())
    np.testing.assert_allclose(updates["batch_stats"]["mean"], np.mean(means, 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates["batch_stats"]["var"], np.mean(variances, 0), rtol=1e-5)
    whole, _ = BatchNorm(use_running_average=False).apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    assert not np.allclose(np.asarray(whole), np.asarray(out), atol=1e-3)
    with pytest.raises(ConfigError, match="bn_group_size=5 must divide the batch of 16"):
        BatchNorm(use_running_average=False, group_size=5).apply(variables, jnp.asarray(x), mutable=["batch_stats"])
