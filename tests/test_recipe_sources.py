"""What docs/recipes.md calls "same" for the loss, the SGD update and timm's schedule, against the sources'
own code: torch's cross entropy with label smoothing, torch's SGD, timm's CosineLRScheduler."""

import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from resnet_jax.training import optim, steps

torch = pytest.importorskip("torch")
timm_cosine = pytest.importorskip("timm.scheduler.cosine_lr")


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().copy_and_resolve_references()


def test_cross_entropy_is_torchs_with_label_smoothing():
    """The "ce" loss of the torchvision, FFCV and MLPerf recipes: torch's CrossEntropyLoss(label_smoothing=0.1)."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 7)).astype(np.float32), rng.integers(0, 7, 6)
    for smoothing in (0.0, 0.1):
        ours = float(jnp.mean(steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)))
        ref = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(torch.tensor(logits), torch.tensor(labels))
        assert ours == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("name", ["imagenet_resnet50_tv2", "imagenet_resnet50_ffcv"])
def test_sgd_is_torchs_sgd(name):
    """The recipe's optimizer (SGD, momentum 0.9, no Nesterov, decay added to the gradient) against
    torch.optim.SGD with the recipe's momentum and weight decay, over steps whose rate changes (the buffer
    holds gradients, the rate multiplies it), on a kernel: the only difference, which parameters decay, is
    a row of its own."""
    c = load_config(name)
    rates = [0.5, 0.3, 0.3, 0.1, 0.05]
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in rates]
    tx = optim.make_optimizer(c, lambda step: jnp.asarray(rates)[step])
    params = {"conv": {"kernel": jnp.asarray(kernel)}}
    state = tx.init(params)
    weight = torch.nn.Parameter(torch.tensor(kernel))
    sgd = torch.optim.SGD([weight], lr=rates[0], momentum=c.momentum, weight_decay=c.weight_decay, nesterov=False)
    for rate, grad in zip(rates, grads):
        updates, state = tx.update({"conv": {"kernel": jnp.asarray(grad)}}, state, params)
        params = {"conv": {"kernel": params["conv"]["kernel"] + updates["conv"]["kernel"]}}
        sgd.param_groups[0]["lr"] = rate
        weight.grad = torch.tensor(grad)
        sgd.step()
        np.testing.assert_allclose(np.asarray(params["conv"]["kernel"]), weight.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["imagenet_resnet50_rsb_a1", "imagenet_resnet50_rsb_a3"])
def test_rsb_schedule_is_timms_cosine_with_the_warm_up_as_a_prefix(name):
    """timm's CosineLRScheduler (warm-up from --warmup-lr, cosine to --min-lr, stepped once an epoch) with
    ``warmup_prefix=True`` over the epochs after the warm-up is the RSB configs' schedule, epoch by epoch; the
    source's ``warmup_prefix=False`` (its cosine also spans the warm-up) is the "cosine over" row's difference,
    and it shows here."""
    c = load_config(name)
    epochs, spe = 40, 3
    c.num_epochs = epochs
    ours = optim.learning_rate_schedule(c, spe, epochs * spe)

    def timm_rates(prefix: bool) -> np.ndarray:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.learning_rate)
        kwargs = dict(warmup_t=c.warmup_epochs, warmup_lr_init=1e-4, lr_min=1e-6, t_in_epochs=True)
        sched = timm_cosine.CosineLRScheduler(opt, t_initial=epochs - c.warmup_epochs if prefix else epochs,
                                              warmup_prefix=prefix, **kwargs)  # fmt: skip
        rates = []
        for epoch in range(epochs):
            sched.step(epoch)
            rates.append(opt.param_groups[0]["lr"])
        return np.array(rates)

    got = np.array([[float(ours(epoch * spe + k)) for k in range(spe)] for epoch in range(epochs)])
    np.testing.assert_allclose(got, np.repeat(timm_rates(True)[:, None], spe, 1), rtol=1e-5, atol=1e-9)
    assert not np.allclose(got[:, 0], timm_rates(False), rtol=1e-3)


def test_eval_flip_ranks_as_ffcvs_summed_logits():
    """FFCV's validation with ``lr_tta`` (train_imagenet.py: ``output += model(ch.flip(images, dims=[3]))``, the
    logits of the image and of its mirror summed, on NCHW): ours averages them, so the top-1 and top-5 hits are
    FFCV's, on a model that is not mirror-symmetric."""
    rng = np.random.default_rng(3)
    n, h, w, classes = 32, 4, 5, 7
    images = rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int32)
    kernel = rng.normal(size=(h * w * 3, classes)).astype(np.float32)

    def apply_fn(variables, x, train):
        return x.reshape(x.shape[0], -1) @ variables["kernel"]

    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels), "mask": jnp.ones(n)}
    kw = dict(apply_fn=apply_fn, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dtype=jnp.float32, num_classes=classes)
    ours = steps.eval_step({"kernel": jnp.asarray(kernel)}, batch, flip=True, **kw)
    plain = steps.eval_step({"kernel": jnp.asarray(kernel)}, batch, flip=False, **kw)
    x = torch.tensor((images / 255.0 - 0.5) / 0.25, dtype=torch.float32).permute(0, 3, 1, 2)  # NCHW
    model = lambda t: t.permute(0, 2, 3, 1).reshape(n, -1) @ torch.tensor(kernel)  # noqa: E731
    output = model(x)
    output += model(torch.flip(x, dims=[3]))
    top5 = output.topk(5, dim=1).indices.numpy()
    assert int(ours["top1"]) == int((top5[:, 0] == labels).sum())
    assert int(ours["top5"]) == int((top5 == labels[:, None]).any(1).sum())
    assert int(plain["top1"]) != int(ours["top1"])  # the mirror changes the ranking here


@pytest.mark.parametrize("style", ["timm", "torchvision"])
def test_mixing_draws_are_the_sources(style):
    """One draw per chunk, as the source draws one per GPU batch: mixup or cutmix (switch 0.5), the mixup lambda
    and the cutmix lambda corrected by its box, against timm's `Mixup._params_per_batch` + `cutmix_bbox_and_lam`
    (RSB: mixup 0.2 / cutmix 1.0) or torchvision's `RandomChoice([MixUp(0.2), CutMix(1.0)])` (V2), 4,000 draws
    each: the share of cutmix within 4 standard deviations, the lambdas by Kolmogorov-Smirnov tests."""
    import jax
    from scipy import stats

    from resnet_jax.augment.mixing import mix_params

    n, h, w = 4000, 32, 24
    keys = jax.random.split(jax.random.key(11), n)
    draw = jax.jit(jax.vmap(lambda k: mix_params(k, h, w, mixup_alpha=0.2, cutmix_alpha=1.0, style=style)))
    ours = draw(keys)
    ours_cut, ours_lam = np.asarray(ours.use_cutmix), np.asarray(ours.lam, np.float64)
    if style == "timm":
        timm_mixup = pytest.importorskip("timm.data.mixup")
        mixer = timm_mixup.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10)
        np.random.seed(0)
        ref = []
        for _ in range(n):
            lam, cut = mixer._params_per_batch()
            ref.append((cut, timm_mixup.cutmix_bbox_and_lam((h, w), lam, correct_lam=True)[1] if cut else lam))
    else:
        from torchvision.transforms import v2

        torch.manual_seed(0)
        mixup, cutmix = v2.MixUp(alpha=0.2, num_classes=10), v2.CutMix(alpha=1.0, num_classes=10)
        image = torch.zeros(3, h, w)
        ref = []
        for _ in range(n):
            cut = bool(torch.randint(2, ()))  # RandomChoice of the two, with equal probabilities
            params = (cutmix if cut else mixup).make_params([image])
            ref.append((cut, params["lam_adjusted"] if cut else params["lam"]))
    ref_cut, ref_lam = np.array([c for c, _ in ref]), np.array([lam for _, lam in ref], np.float64)
    assert abs(ours_cut.mean() - ref_cut.mean()) < 4 * np.sqrt(0.25 / n) * np.sqrt(2)
    for kind in (False, True):
        p = stats.ks_2samp(ours_lam[ours_cut == kind], ref_lam[ref_cut == kind]).pvalue
        assert p > 1e-3, (style, "cutmix" if kind else "mixup", p)
