"""Mixup / CutMix (resnet_jax.augment.mixing) against timm's `Mixup`, and random
erasing (resnet_jax.augment.erasing) against torchvision's `RandomErasing`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.augment.erasing import erasing_boxes, random_erasing
from resnet_jax.augment.mixing import cutmix, cutmix_box, mix_batch, mix_params, mixup, mixup_target

torch = pytest.importorskip("torch")
timm_mixup = pytest.importorskip("timm.data.mixup")
tv_transforms = pytest.importorskip("torchvision.transforms")

B, H, W, C, CLASSES = 8, 12, 10, 3, 5


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(-2, 2, (B, H, W, C)).astype(np.float32)
    labels = rng.integers(0, CLASSES, B).astype(np.int64)
    return images, labels


def _timm_mix(monkeypatch, images, labels, lam, use_cutmix, box=None, smoothing=0.1):
    """timm's Mixup(mode="batch") on torch tensors with its draws replaced by ours."""
    mixer = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=smoothing, num_classes=CLASSES)
    monkeypatch.setattr(mixer, "_params_per_batch", lambda: (lam, use_cutmix))
    if box is not None:
        monkeypatch.setattr(timm_mixup, "rand_bbox", lambda *a, **k: tuple(int(v) for v in box))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    x, target = mixer(x, torch.from_numpy(labels))
    return x.numpy().transpose(0, 2, 3, 1), target.numpy()


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _mix(key, images, labels, num_classes, mixup_alpha, cutmix_alpha, prob, smoothing):
    out = mix_batch(
        key,
        images,
        labels,
        num_classes,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        smoothing=smoothing,
    )
    return out, mix_params(key, H, W, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob)


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "none"])
def test_mix_batch_matches_timm(monkeypatch, mode):
    images, labels = _batch()
    alphas = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0), "none": (1.0, 1.0)}[mode]
    prob = 0.0 if mode == "none" else 1.0
    key = jax.random.key(3)
    (mixed, target), p = _mix(key, jnp.asarray(images), jnp.asarray(labels), CLASSES, *alphas, prob, 0.1)
    assert bool(p.use_cutmix) == (mode == "cutmix")
    if mode == "none":
        assert float(p.lam) == 1.0
        t_images, t_target = _timm_mix(monkeypatch, images, labels, 1.0, False)
        np.testing.assert_array_equal(np.asarray(mixed), images)
    elif mode == "mixup":
        assert 0.0 < float(p.lam) < 1.0
        t_images, t_target = _timm_mix(monkeypatch, images, labels, float(p.lam), False)
    else:
        y0, y1, x0, x1 = (int(v) for v in p.box)
        assert 0 < (y1 - y0) * (x1 - x0) < H * W
        # timm recomputes the corrected lambda from the (patched) box; the raw lambda only has to be != 1.
        t_images, t_target = _timm_mix(monkeypatch, images, labels, 0.5, True, box=p.box)
        np.testing.assert_allclose(float(p.lam), 1 - (y1 - y0) * (x1 - x0) / (H * W), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed), t_images, atol=1e-5)
    np.testing.assert_allclose(np.asarray(target), t_target, atol=1e-6)
    np.testing.assert_allclose(np.asarray(target).sum(1), 1.0, atol=1e-6)


def test_mixup_cutmix_pieces_and_dtypes():
    images, labels = _batch(1)
    u8 = (np.abs(images) * 60).astype(np.uint8)
    # mixup: uint8 in -> float32 out, not rounded; same as on the float32 copy.
    mixed = mixup(jnp.asarray(u8), 0.3)
    assert mixed.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mixed), 0.3 * u8 + 0.7 * u8[::-1].astype(np.float32), rtol=1e-6)
    assert mixup(jnp.asarray(images, jnp.bfloat16), 0.3).dtype == jnp.bfloat16
    # cutmix with a traced box under jit: a selection, dtype kept.
    box = tuple(jnp.int32(v) for v in (2, 7, 3, 10))
    cut = jax.jit(cutmix)(jnp.asarray(u8), box)
    expected = u8.copy()
    expected[:, 2:7, 3:10] = u8[::-1, 2:7, 3:10]
    assert cut.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(cut), expected)
    # mix_batch on uint8 = mix_batch on the same values in float32, returned as float32.
    key = jax.random.key(5)
    (a, ta), _ = _mix(key, jnp.asarray(u8), jnp.asarray(labels), CLASSES, 1.0, 1.0, 1.0, 0.1)
    (b, tb), _ = _mix(key, jnp.asarray(u8, jnp.float32), jnp.asarray(labels), CLASSES, 1.0, 1.0, 1.0, 0.1)
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ta), np.asarray(tb))
    # mixup_target against timm's for a few lambdas and smoothings.
    for lam, smoothing in [(1.0, 0.0), (0.37, 0.1), (0.0, 0.2)]:
        ours = mixup_target(jnp.asarray(labels), CLASSES, lam, smoothing)
        theirs = timm_mixup.mixup_target(torch.from_numpy(labels), CLASSES, lam, smoothing)
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-6)


def test_cutmix_box():
    h, w, n = 32, 24, 4000
    keys = jax.random.split(jax.random.key(0), n)
    lams = np.random.default_rng(1).beta(1.0, 1.0, n).astype(np.float32)
    boxes = jax.jit(jax.vmap(cutmix_box, (0, 0, None, None)), static_argnums=(2, 3))
    (y0, y1, x0, x1), corrected = boxes(keys, lams, h, w)
    y0, y1, x0, x1, corrected = (np.asarray(v) for v in (y0, y1, x0, x1, corrected))
    assert (0 <= y0).all() and (y0 <= y1).all() and (y1 <= h).all()
    assert (0 <= x0).all() and (x0 <= x1).all() and (x1 <= w).all()
    np.testing.assert_allclose(corrected, 1 - (y1 - y0) * (x1 - x0) / (h * w), atol=1e-6)
    assert abs(float(np.mean(lams)) - 0.5) < 0.05
    # Clipping at the borders shrinks the box, so the corrected lambda's mean is above E[lambda] = 0.5
    # (about 0.68); it matches timm's own cutmix_bbox_and_lam over Beta(1, 1) lambdas.
    np.random.seed(0)
    timm_lams = [timm_mixup.cutmix_bbox_and_lam((h, w), np.random.beta(1.0, 1.0))[1] for _ in range(n)]
    assert abs(corrected.mean() - np.mean(timm_lams)) < 0.025
    assert 0.6 < corrected.mean() < 0.76
    # The unclipped cut is int(H * sqrt(1 - lam)) by int(W * sqrt(1 - lam)), as timm's.
    for lam in (0.1, 0.45, 0.8):
        (b0, b1, c0, c1), _ = boxes(keys, np.full(n, lam, np.float32), h, w)
        assert int(np.max(b1 - b0)) == int(h * np.sqrt(1 - lam))
        assert int(np.max(c1 - c0)) == int(w * np.sqrt(1 - lam))


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, None, None, None, None))
def _params(keys, mixup_alpha, cutmix_alpha, switch_prob, prob):
    return mix_params(
        keys, H, W, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, prob=prob
    )


def test_mix_params_statistics():
    keys = jax.random.split(jax.random.key(7), 400)
    for switch in (0.5, 0.2):
        frac = float(np.mean(_params(keys, 1.0, 1.0, switch, 1.0).use_cutmix))
        assert abs(frac - switch) < 0.1, (switch, frac)
    assert not np.any(_params(keys, 0.8, 0.0, 0.5, 1.0).use_cutmix)
    assert np.all(_params(keys, 0.0, 1.0, 0.5, 1.0).use_cutmix)
    # prob 0.5: half the batches mixed, half of those by cutmix. (A cutmix box can be empty: lambda 1.)
    half = _params(keys, 1.0, 1.0, 0.5, 0.5)
    lam, use_cutmix = np.asarray(half.lam), np.asarray(half.use_cutmix)
    assert abs(use_cutmix.mean() - 0.25) < 0.07
    assert abs(np.mean(~use_cutmix & (lam < 1.0)) - 0.25) < 0.07
    for args in ((1.0, 1.0, 0.5, 0.0), (0.0, 0.0, 0.5, 1.0)):  # prob 0, or both alphas 0: never mixed
        p = _params(keys, *args)
        assert np.all(np.asarray(p.lam) == 1.0) and not np.any(p.use_cutmix)


def test_mix_batch_unmixed_and_traced_population():
    images, labels = _batch(2)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    smooth = np.full((B, CLASSES), 0.1 / CLASSES, np.float32)
    smooth[np.arange(B), labels] = 1 - 0.1 + 0.1 / CLASSES
    for alphas_prob in ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)):  # prob 0, or both alphas 0
        (out, target), _ = _mix(jax.random.key(0), x, y, CLASSES, *alphas_prob, 0.1)
        np.testing.assert_array_equal(np.asarray(out), images)
        np.testing.assert_allclose(np.asarray(target), smooth, atol=1e-7)

    # A population of 4 members, each with its own (traced) alphas, probabilities and smoothing.
    mixup_alpha = jnp.array([0.0, 0.2, 0.0, 1.0])
    cutmix_alpha = jnp.array([0.0, 0.0, 1.0, 1.0])
    switch_prob = jnp.array([0.5, 0.5, 0.5, 0.5])
    prob = jnp.array([1.0, 1.0, 1.0, 1.0])
    smoothing = jnp.array([0.1, 0.0, 0.1, 0.2])
    keys = jax.random.split(jax.random.key(11), 4)

    @jax.jit
    @jax.vmap
    def member(k, ma, ca, sp, pr, sm):
        out = mix_batch(k, x, y, CLASSES, mixup_alpha=ma, cutmix_alpha=ca, switch_prob=sp, prob=pr, smoothing=sm)
        return out, mix_params(k, H, W, mixup_alpha=ma, cutmix_alpha=ca, switch_prob=sp, prob=pr)

    (out, target), p = member(keys, mixup_alpha, cutmix_alpha, switch_prob, prob, smoothing)
    assert out.shape == (4, B, H, W, C) and target.shape == (4, B, CLASSES)
    assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(target)).all()
    np.testing.assert_allclose(np.asarray(target).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out[0]), images)  # both alphas 0: unmixed
    assert float(p.lam[0]) == 1.0
    assert not bool(p.use_cutmix[1]) and 0 < float(p.lam[1]) < 1  # mixup only
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(mixup(x, p.lam[1])), atol=1e-6)
    assert bool(p.use_cutmix[2])  # cutmix only
    box = tuple(b[2] for b in p.box)
    np.testing.assert_array_equal(np.asarray(out[2]), np.asarray(cutmix(x, box)))
    np.testing.assert_allclose(np.asarray(target[3]), np.asarray(mixup_target(y, CLASSES, p.lam[3], 0.2)), atol=1e-6)


# ---------------------------------------------------------------- random erasing


def test_random_erasing_dtypes():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    key = jax.random.key(0)
    mean = (125.3, 122.9, 113.8)
    out = random_erasing(key, jnp.asarray(u8), 1.0, value=mean)
    assert out.shape == u8.shape and out.dtype == jnp.float32
    apply, top, left, h, w = (np.asarray(v) for v in erasing_boxes(key, 4, 16, 16, 1.0))
    i = int(np.argmax(apply))
    region = np.asarray(out)[i, top[i] : top[i] + h[i], left[i] : left[i] + w[i]]
    np.testing.assert_array_equal(region, np.broadcast_to(np.float32(mean), region.shape))
    assert random_erasing(key, jnp.asarray(u8, jnp.bfloat16)).dtype == jnp.bfloat16
    assert random_erasing(key, jnp.asarray(u8, jnp.float32)).dtype == jnp.float32


def test_erasing_boxes_statistics():
    n, hh, ww = 4000, 32, 40
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    boxes = jax.jit(erasing_boxes, static_argnums=(1, 2, 3))
    apply, top, left, h, w = (np.asarray(v) for v in boxes(jax.random.key(1), n, hh, ww, 1.0, scale, ratio))
    assert apply.mean() > 0.99  # only images where none of the 10 tries fits are left
    assert (h[~apply] == 0).all() and (w[~apply] == 0).all()
    top, left, h, w = top[apply], left[apply], h[apply], w[apply]
    assert (h >= 1).all() and (h < hh).all() and (w >= 1).all() and (w < ww).all()
    assert (top >= 0).all() and (top + h <= hh).all() and (left >= 0).all() and (left + w <= ww).all()
    assert top.min() == 0 and left.min() == 0 and (top + h).max() == hh and (left + w).max() == ww
    # h and w are sqrt(area * r) and sqrt(area / r) rounded: the bounds on area and r hold up to +-0.5 each.
    area = hh * ww
    assert ((h + 0.5) * (w + 0.5) >= scale[0] * area).all() and ((h - 0.5) * (w - 0.5) <= scale[1] * area).all()
    assert ((h + 0.5) / (w - 0.5) >= ratio[0]).all() and ((h - 0.5) / (w + 0.5) <= ratio[1]).all()
    assert abs(np.median(np.log(h / w))) < 0.1  # log-uniform aspect: symmetric about 1 for (0.3, 3.3)

    quarter = np.asarray(boxes(jax.random.key(2), n, hh, ww, 0.25, scale, ratio)[0])
    assert abs(quarter.mean() - 0.25) < 0.03
    # A traced probability, one per population member.
    probs = jnp.array([0.0, 0.5, 1.0])
    frac = jax.jit(jax.vmap(lambda p: erasing_boxes(jax.random.key(3), 2000, hh, ww, p)[0].mean()))(probs)
    assert float(frac[0]) == 0.0 and abs(float(frac[1]) - 0.5) < 0.05 and float(frac[2]) > 0.99


def test_random_erasing_matches_torchvision(monkeypatch):
    rng = np.random.default_rng(3)
    n, hh, ww = 16, 20, 14
    images = rng.normal(size=(n, hh, ww, C)).astype(np.float32)
    value = (0.5, -1.0, 2.0)
    key = jax.random.key(4)
    out = np.asarray(jax.jit(random_erasing)(key, jnp.asarray(images), 0.5, value=value))
    apply, top, left, h, w = (np.asarray(v) for v in erasing_boxes(key, n, hh, ww, 0.5))
    assert 0 < apply.sum() < n
    erasing = tv_transforms.RandomErasing(p=1.0, value=value)
    for k in range(n):
        mask = np.zeros((hh, ww), bool)
        mask[top[k] : top[k] + h[k], left[k] : left[k] + w[k]] = True
        np.testing.assert_array_equal(out[k][~mask], images[k][~mask])  # pixels outside unchanged
        np.testing.assert_array_equal(out[k][mask], np.broadcast_to(np.float32(value), (mask.sum(), C)))
        img = torch.from_numpy(images[k].transpose(2, 0, 1).copy())
        if apply[k]:
            params = (int(top[k]), int(left[k]), int(h[k]), int(w[k]), torch.tensor(value)[:, None, None])
        else:  # torchvision's answer when nothing is erased
            params = (0, 0, hh, ww, img)
        monkeypatch.setattr(tv_transforms.RandomErasing, "get_params", staticmethod(lambda *a, p=params, **kw: p))
        np.testing.assert_array_equal(erasing(img).numpy().transpose(1, 2, 0), out[k])


# ---------------------------------------------------------------- one draw per chunk; torchvision's style


def test_mix_batch_per_chunk_is_timms_mixup_on_each_chunk(monkeypatch):
    """A global batch of 4 chunks of 4: each chunk is timm's Mixup(mode="batch") on those 4 images alone, with
    the draw of its own key (jax.random.split(key, 4)[k]); chunks draw different lambdas, mixup and cutmix."""
    n, chunk = 16, 4
    rng = np.random.default_rng(5)
    images = rng.uniform(-2, 2, (n, H, W, C)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n).astype(np.int64)
    key = jax.random.key(21)
    mixed, target = jax.jit(
        functools.partial(mix_batch, num_classes=CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, smoothing=0.1,
                          chunk=chunk)  # fmt: skip
    )(key, jnp.asarray(images), jnp.asarray(labels))
    keys = jax.random.split(key, n // chunk)
    kinds = set()
    for k in range(n // chunk):
        p = mix_params(keys[k], H, W, mixup_alpha=1.0, cutmix_alpha=1.0)
        part = slice(k * chunk, (k + 1) * chunk)
        box = p.box if bool(p.use_cutmix) else None
        lam = 0.5 if bool(p.use_cutmix) else float(p.lam)
        ref_images, ref_target = _timm_mix(monkeypatch, images[part], labels[part], lam, bool(p.use_cutmix), box)
        np.testing.assert_allclose(np.asarray(mixed[part]), ref_images, atol=1e-5, err_msg=f"chunk {k}")
        np.testing.assert_allclose(np.asarray(target[part]), ref_target, atol=1e-6, err_msg=f"chunk {k}")
        kinds.add((bool(p.use_cutmix), round(float(p.lam), 6)))
    assert len(kinds) == n // chunk and {c for c, _ in kinds} == {False, True}
    whole, _ = mix_batch(key, jnp.asarray(images), jnp.asarray(labels), CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0)
    assert not np.allclose(np.asarray(whole), np.asarray(mixed))
    with pytest.raises(ValueError, match="chunks of 5"):
        mix_batch(key, jnp.asarray(images), jnp.asarray(labels), CLASSES, mixup_alpha=1.0, cutmix_alpha=0.0, chunk=5)


def _torchvision_mix(monkeypatch, mixer, images, labels, **params):
    """transforms.v2.MixUp / CutMix on torch tensors with its lambda (and cutmix centre) replaced by ours."""
    from torchvision.transforms.v2 import _augment

    monkeypatch.setattr(mixer._dist, "sample", lambda shape: torch.tensor(params["lam"]))
    if "centre" in params:
        draws = iter([params["centre"][1], params["centre"][0]])  # r_x, then r_y
        monkeypatch.setattr(_augment.torch, "randint", lambda high, size: torch.tensor([next(draws)]))
    x, target = mixer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))
    return x.numpy().transpose(0, 2, 3, 1), target.numpy()


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_torchvision_style_is_transforms_v2(monkeypatch, method):
    """style="torchvision": the batch rolled by one (image i-1 is i's partner) and transforms.v2.CutMix's box."""
    from torchvision.transforms import v2

    images, labels = _batch(4)
    alphas = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0)}[method]
    key = jax.random.key(8)
    mixed, target = mix_batch(key, jnp.asarray(images), jnp.asarray(labels), CLASSES, mixup_alpha=alphas[0],
                              cutmix_alpha=alphas[1], style="torchvision")  # fmt: skip
    p = mix_params(key, H, W, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], style="torchvision")
    if method == "mixup":
        ref = _torchvision_mix(monkeypatch, v2.MixUp(alpha=1.0, num_classes=CLASSES), images, labels, lam=float(p.lam))
    else:
        k_lam, k_box = jax.random.split(key, 4)[2:]
        raw = float(jax.random.beta(k_lam, 1.0, 1.0))
        centre = [int(v) for v in jax.random.randint(jax.random.split(k_box)[0], (), 0, H)[None]] + [
            int(jax.random.randint(jax.random.split(k_box)[1], (), 0, W))
        ]
        ref = _torchvision_mix(monkeypatch, v2.CutMix(alpha=1.0, num_classes=CLASSES), images, labels, lam=raw,
                               centre=centre)  # fmt: skip
        y0, y1, x0, x1 = (int(v) for v in p.box)
        assert 0 < (y1 - y0) * (x1 - x0) < H * W
        # The two styles' boxes differ where timm's side is odd (W = 10, lam = 0.5: 7 pixels, torchvision's 2 x 3).
        widths = {s: [int(b[3] - b[2]) for b in (cutmix_box(jax.random.key(i), 0.5, H, W, s)[0] for i in range(40))]
                  for s in ("timm", "torchvision")}  # fmt: skip
        assert max(widths["timm"]) == 7 and max(widths["torchvision"]) == 6
    np.testing.assert_allclose(np.asarray(mixed), ref[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(target), ref[1], atol=1e-6)
