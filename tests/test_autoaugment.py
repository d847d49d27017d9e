"""TrivialAugmentWide and RandAugment in JAX (resnet_jax.augment.autoaugment): each op against
torchvision.transforms.v2.functional, TrivialAugmentWide's tables and per-image results against
torchvision's, RandAugment's arguments and ops against timm's (PIL), and the batched functions'
random draws, determinism and jit/vmap behaviour."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.augment import autoaugment as A

FILL = (10.0, 200.0, 60.0)
TIMM_FILL = (124, 116, 104)


def structured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Colour gradients plus noise, uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (h + w - 2)], -1)
    return np.clip(base * 0.7 + rng.integers(0, 80, (h, w, 3)), 0, 255).astype(np.uint8)


H, W = 27, 34  # not square, so that height and width cannot be swapped unnoticed


def torchvision_f():
    pytest.importorskip("torch")
    return pytest.importorskip("torchvision.transforms.v2.functional")


def on_torch(image: np.ndarray, fn, *args, **kwargs) -> np.ndarray:
    import torch

    out = fn(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), *args, **kwargs)
    return out.permute(1, 2, 0).numpy()


def diff_stats(ours, ref) -> tuple[int, float]:
    d = np.abs(np.asarray(ours).astype(np.int32) - np.asarray(ref).astype(np.int32))
    return int(d.max()), float(d.mean())


@functools.cache
def batched(op, interpolation=None):
    """op jitted and vmapped over its magnitude (traced)."""
    if interpolation is None:
        return jax.jit(jax.vmap(op, in_axes=(None, 0)))
    return jax.jit(jax.vmap(lambda x, m: op(x, m, FILL, interpolation), in_axes=(None, 0)))


# ---------------------------------------------------------------- ops vs torchvision

GEOMETRIC = {
    # op: (magnitudes, the torchvision call for one magnitude)
    "shear_x": (
        [0.99, -0.99, 0.33, -0.495, 0.066, 0.0],
        lambda F, m, interp: dict(
            fn=F.affine,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[float(np.degrees(np.arctan(m))), 0.0],
            interpolation=interp,
            fill=list(FILL),
            center=[0, 0],
        ),
    ),
    "shear_y": (
        [0.99, -0.99, 0.33, -0.495, 0.066, 0.0],
        lambda F, m, interp: dict(
            fn=F.affine,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[0.0, float(np.degrees(np.arctan(m)))],
            interpolation=interp,
            fill=list(FILL),
            center=[0, 0],
        ),
    ),
    "translate_x": (
        [15.0, -7.0, 0.0, 3.4, -12.6, 40.0],
        lambda F, m, interp: dict(
            fn=F.affine,
            angle=0.0,
            translate=[m, 0.0],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=interp,
            fill=list(FILL),
        ),
    ),
    "translate_y": (
        [15.0, -7.0, 0.0, 3.4, -12.6, 40.0],
        lambda F, m, interp: dict(
            fn=F.affine,
            angle=0.0,
            translate=[0.0, m],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=interp,
            fill=list(FILL),
        ),
    ),
    "rotate": (
        [135.0, -135.0, 90.0, -90.0, 180.0, 4.5, -31.5, 67.5, 0.0],
        lambda F, m, interp: dict(fn=F.rotate, angle=m, interpolation=interp, fill=list(FILL)),
    ),
}


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_ops_match_torchvision(name, interpolation):
    """Both interpolations, signed magnitudes, a non-square image (and a square one for rotate, which torchvision
    turns by multiples of 90 degrees with rot90): within one grey level, mean < 0.01 (measured: identical for
    nearest, a handful of values one level apart for bilinear)."""
    F = torchvision_f()
    magnitudes, call = GEOMETRIC[name]
    op = batched(getattr(A, name), interpolation)
    images = [structured_image(H, W, seed=1)]
    if name == "rotate":  # torchvision turns a square image by 90 degrees with rot90
        images.append(structured_image(32, 32))
    for image in images:
        ours = np.asarray(op(image, jnp.asarray(magnitudes, jnp.float32)))
        assert ours.dtype == np.uint8 and ours.shape == (len(magnitudes), *image.shape)
        for m, out in zip(magnitudes, ours):
            kwargs = call(F, m, F.InterpolationMode(interpolation))
            ref = on_torch(image, kwargs.pop("fn"), **kwargs)
            worst, mean = diff_stats(out, ref)
            assert worst <= 1 and mean < 0.01, (name, interpolation, image.shape, m, worst, mean)


COLOUR = {
    # op: (magnitudes, torchvision function)
    "brightness": ([0.01, 0.1, 0.5, 1.0, 1.5, 1.9, 1.99], "adjust_brightness"),
    "color": ([0.01, 0.1, 0.5, 1.0, 1.5, 1.9, 1.99], "adjust_saturation"),
    "contrast": ([0.01, 0.1, 0.5, 1.0, 1.5, 1.9, 1.99], "adjust_contrast"),
    "sharpness": ([0.01, 0.1, 0.5, 1.0, 1.5, 1.9, 1.99], "adjust_sharpness"),
    "posterize": (list(range(9)), "posterize"),
    "solarize": ([0.0, 8.5, 127.5, 128.0, 238.0, 246.5, 255.0], "solarize"),
}


def colour_images() -> list[np.ndarray]:
    """Two structured images and the edge cases of the histogram ops: a constant image, two grey levels and a
    low-contrast one (all [H, W, 3]: one compilation per op)."""
    rng = np.random.default_rng(3)
    two = np.where(rng.random((H, W, 3)) < 0.3, 40, 200).astype(np.uint8)
    low = rng.integers(100, 141, (H, W, 3)).astype(np.uint8)
    return [structured_image(H, W), structured_image(H, W, seed=1), np.full((H, W, 3), 77, np.uint8), two, low]


@pytest.mark.parametrize("name", list(COLOUR))
def test_colour_ops_match_torchvision(name):
    """Within one grey level, mean difference < 0.05 (measured: brightness, contrast, sharpness, posterize and
    solarize identical; color up to a few % of values one level apart, because torch fuses its multiply-adds)."""
    F = torchvision_f()
    magnitudes, tv_name = COLOUR[name]
    op = batched(getattr(A, name))
    dtype = jnp.int32 if name == "posterize" else jnp.float32
    for image in colour_images():
        ours = np.asarray(op(image, jnp.asarray(magnitudes, dtype)))
        for m, out in zip(magnitudes, ours):
            ref = on_torch(image, getattr(F, tv_name), m)
            worst, mean = diff_stats(out, ref)
            assert worst <= 1 and mean < 0.05, (name, image.shape, m, worst, mean)


@pytest.mark.parametrize("name", ["autocontrast", "equalize", "invert"])
def test_parameterless_ops_match_torchvision(name):
    F = torchvision_f()
    op = jax.jit(getattr(A, name))
    for image in colour_images():
        ours = np.asarray(op(image))
        worst, mean = diff_stats(ours, on_torch(image, getattr(F, name)))
        assert ours.dtype == np.uint8 and worst <= 1 and mean < 0.01, (name, image.shape, worst, mean)
    flat = np.full((H, W, 3), 77, np.uint8)  # no contrast to stretch, one histogram bin: unchanged
    if name != "invert":
        np.testing.assert_array_equal(np.asarray(op(flat)), flat)


def test_solarize_add_is_a_lookup_table():
    """timm's solarize_add: values below the threshold get `addition`, clipped to 255."""
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    for add in (0, 50, 110, 200):
        lut = np.array([min(255, i + add) if i < 128 else i for i in range(256)], np.uint8)
        np.testing.assert_array_equal(np.asarray(A.solarize_add(image, add)), lut[image])


def test_float_input_keeps_its_dtype():
    """Float images in [0, 255]: torchvision's float arithmetic (no flooring or truncation), exact for the
    integer ops."""
    image = structured_image(16, 16)
    fimage = image.astype(np.float32)
    calls = {
        "shear_x": lambda op, x: op(x, 0.3, FILL),
        "rotate": lambda op, x: op(x, 30.0, FILL),
        "brightness": lambda op, x: op(x, 1.4),
        "color": lambda op, x: op(x, 0.3),
        "contrast": lambda op, x: op(x, 1.7),
        "sharpness": lambda op, x: op(x, 1.9),
        "posterize": lambda op, x: op(x, 3),
        "solarize": lambda op, x: op(x, 100.0),
        "solarize_add": lambda op, x: op(x, 60.0),
        "autocontrast": lambda op, x: op(x),
        "equalize": lambda op, x: op(x),
        "invert": lambda op, x: op(x),
    }
    exact = {"shear_x", "rotate", "posterize", "solarize", "solarize_add", "equalize", "invert"}
    run_all = jax.jit(lambda x: {name: call(getattr(A, name), x) for name, call in calls.items()})
    outs_f, outs_u = run_all(fimage), run_all(image)
    for name in calls:
        out_f, out_u = np.asarray(outs_f[name]), np.asarray(outs_u[name])
        assert out_f.dtype == np.float32, name
        assert out_f.min() >= 0 and out_f.max() <= 255, name
        if name in exact:
            np.testing.assert_array_equal(out_f, out_u.astype(np.float32), err_msg=name)
        elif name in ("brightness", "autocontrast"):
            np.testing.assert_array_equal(np.floor(out_f), out_u, err_msg=name)
        else:  # the uint8 path also floors the grayscale / rounds the smoothed image
            assert np.abs(out_f - out_u).max() < 2 and np.abs(out_f - out_u).mean() < 1, name


# ---------------------------------------------------------------- TrivialAugmentWide


def torchvision_op_argument(name: str, magnitude: float) -> float:
    """The argument torchvision's TrivialAugmentWide hands its op for `magnitude` (the enhancement ops get
    1 + magnitude; the table here holds the magnitude)."""
    if name in ("TranslateX", "TranslateY", "Posterize"):
        return float(int(magnitude))
    if name == "Solarize":
        return float(np.float32(255 * magnitude))  # transforms.v2: bound * magnitude, compared in float32
    return magnitude


def test_trivial_augment_wide_tables_match_torchvision():
    torchvision_f()
    from torchvision.transforms import v2

    space = v2.TrivialAugmentWide._AUGMENTATION_SPACE
    assert tuple(space) == A.TRIVIAL_AUGMENT_WIDE_OPS
    for i, (name, (magnitudes_fn, signed)) in enumerate(space.items()):
        assert bool(A._TA_SIGNED[i]) == signed, name
        magnitudes = magnitudes_fn(31, 32, 32)
        expected = np.zeros(31) if magnitudes is None else [torchvision_op_argument(name, float(m)) for m in magnitudes]
        np.testing.assert_array_equal(A._TA_ARGS[i], np.asarray(expected, np.float32), err_msg=name)
    # int(15.999999) = 15: torchvision's translate bins are truncated after its float32 linspace.
    assert A._TA_ARGS[3, 15] == 15.0


TA_BATCH = 64


@functools.cache
def jitted_ta(interpolation: str = "nearest"):
    """trivial_augment_wide, compiled once for [TA_BATCH, 32, 32, 3] and FILL."""
    return jax.jit(functools.partial(A.trivial_augment_wide, interpolation=interpolation))


@functools.cache
def jitted_op(name: str, interpolation: str | None = None):
    op = getattr(A, name)
    return jax.jit(op if interpolation is None else functools.partial(op, interpolation=interpolation))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_trivial_augment_wide_matches_torchvision_per_image(interpolation):
    """Each image against torchvision's TrivialAugmentWide op applied with the same draw, with nearest
    (torchvision's default) and bilinear interpolation (its classification reference's); and exactly
    against this module's own op functions."""
    F = torchvision_f()
    from torchvision.transforms import v2

    tv = v2.TrivialAugmentWide(fill=list(FILL), interpolation=F.InterpolationMode(interpolation))
    images = np.stack([structured_image(32, 32, seed=s) for s in range(TA_BATCH)])
    key = jax.random.key(7)
    ours = np.asarray(jitted_ta(interpolation)(key, images, FILL))
    ops, args = map(np.asarray, A.trivial_augment_wide_choices(key, len(images)))
    assert len(set(ops.tolist())) == 14  # every op exercised
    own = {
        "Identity": lambda x, a: x,
        "ShearX": lambda x, a: jitted_op("shear_x", interpolation)(x, a, FILL),
        "ShearY": lambda x, a: jitted_op("shear_y", interpolation)(x, a, FILL),
        "TranslateX": lambda x, a: jitted_op("translate_x", interpolation)(x, a, FILL),
        "TranslateY": lambda x, a: jitted_op("translate_y", interpolation)(x, a, FILL),
        "Rotate": lambda x, a: jitted_op("rotate", interpolation)(x, a, FILL),
        "Brightness": jitted_op("brightness"),
        "Color": jitted_op("color"),
        "Contrast": jitted_op("contrast"),
        "Sharpness": jitted_op("sharpness"),
        "Posterize": lambda x, a: jitted_op("posterize")(x, int(a)),
        "Solarize": jitted_op("solarize"),
        "AutoContrast": lambda x, a: jitted_op("autocontrast")(x),
        "Equalize": lambda x, a: jitted_op("equalize")(x),
    }
    for image, out, op, arg in zip(images, ours, ops, args):
        name = A.TRIVIAL_AUGMENT_WIDE_OPS[op]
        np.testing.assert_array_equal(out, np.asarray(own[name](image, arg)), err_msg=name)
        # Back to torchvision's magnitude (its op receives 1 + m, int(m), 255 * m).
        magnitude = float(arg) - 1.0 if A._TA_ENHANCE[op] else float(arg)
        if name == "Solarize":
            magnitude = float(arg) / 255.0
        ref = on_torch(image, tv._apply_image_or_video_transform, name, magnitude, tv.interpolation, tv._fill)
        worst, mean = diff_stats(out, ref)
        assert worst <= 1 and mean < 0.05, (name, float(arg), worst, mean)


def test_trivial_augment_wide_batch():
    # The trainer's call: jit, default fill, [8, 32, 32, 3].
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    out = jax.jit(A.trivial_augment_wide)(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == jnp.uint8

    images = np.random.default_rng(0).integers(0, 256, (TA_BATCH, 32, 32, 3), dtype=np.uint8)
    f = jitted_ta()
    out = np.asarray(f(jax.random.key(0), images, FILL))
    np.testing.assert_array_equal(out, np.asarray(f(jax.random.key(0), images, FILL)))
    assert not np.array_equal(out, np.asarray(f(jax.random.key(1), images, FILL)))

    # An independent draw per image: 64 copies of one image come out in many different ways.
    copies = np.broadcast_to(structured_image(32, 32), (TA_BATCH, 32, 32, 3))
    out = np.asarray(f(jax.random.key(3), copies, FILL))
    distinct = {o.tobytes() for o in out}
    assert len(distinct) >= 20
    ops, _ = A.trivial_augment_wide_choices(jax.random.key(3), TA_BATCH)
    assert len(set(np.asarray(ops).tolist())) >= 10
    for o, op in zip(out, np.asarray(ops)):
        if A.TRIVIAL_AUGMENT_WIDE_OPS[op] == "Identity":
            np.testing.assert_array_equal(o, copies[0])


def test_trivial_augment_wide_choices_distribution():
    n = 28_000
    ops, args = map(np.asarray, jax.jit(A.trivial_augment_wide_choices, static_argnums=1)(jax.random.key(0), n))
    counts = np.bincount(ops, minlength=14)
    assert counts.shape == (14,) and np.all(np.abs(counts - n / 14) < 0.1 * n / 14), counts
    # Every magnitude bin comes up, about uniformly, with both signs for the signed ops.
    rotate = args[ops == A.TRIVIAL_AUGMENT_WIDE_OPS.index("Rotate")]
    bins = np.rint(np.abs(rotate) / 4.5).astype(int)
    np.testing.assert_array_equal(np.abs(rotate), bins * 4.5)
    assert np.all(np.abs(np.bincount(bins, minlength=31) - len(rotate) / 31) < 0.4 * len(rotate) / 31)
    assert 0.45 < np.mean(rotate[rotate != 0] < 0) < 0.55
    brightness = args[ops == A.TRIVIAL_AUGMENT_WIDE_OPS.index("Brightness")]
    assert brightness.min() >= 0.01 - 1e-6 and brightness.max() <= 1.99 + 1e-6
    assert 0.45 < np.mean(brightness < 1) < 0.55
    posterize = args[ops == A.TRIVIAL_AUGMENT_WIDE_OPS.index("Posterize")]
    assert set(posterize.tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}  # unsigned
    for name in ("Identity", "AutoContrast", "Equalize"):
        assert np.all(args[ops == A.TRIVIAL_AUGMENT_WIDE_OPS.index(name)] == 0)


# ---------------------------------------------------------------- RandAugment vs timm


def timm_aa():
    return pytest.importorskip("timm.data.auto_augment")


LEVELS = [0.0, 1.3, 3.3, 5.0, 6.6, 9.0, 9.7, 10.0]


ra_args = jax.jit(jax.vmap(A._rand_augment_arg))


def test_rand_augment_ops_and_arguments_match_timm(monkeypatch):
    T = timm_aa()
    assert A.RAND_AUGMENT_OPS == tuple(T._RAND_INCREASING_TRANSFORMS)
    hparams = dict(translate_const=250, img_mean=TIMM_FILL)
    cases = [(i, level, negate) for i in range(15) for level in LEVELS for negate in (False, True)]
    ours = np.asarray(ra_args(*(jnp.asarray(c) for c in zip(*cases))))
    for (i, level, negate), arg in zip(cases, ours):
        name = A.RAND_AUGMENT_OPS[i]
        monkeypatch.setattr(T.random, "random", lambda negate=negate: 0.9 if negate else 0.1)
        fn = T.LEVEL_TO_ARG[name]
        expected = fn(level, hparams)[0] if fn is not None else 0.0
        assert float(arg) == pytest.approx(expected, rel=1e-6, abs=1e-6), (name, level, negate)


def test_rand_augment_layer_matches_timm(monkeypatch):
    """Each op at several levels and both signs, through the batched layer, against timm's AugmentOp (PIL,
    bilinear). Pixels whose bilinear taps all lie inside the image: within one grey level (PIL truncates where
    torchvision rounds: mean < 0.6); the warped border may differ by up to |image - fill| (PIL switches to the
    fill colour abruptly), so the whole image only has mean < 3. Colour ops: within one grey level, mean < 0.7
    (PIL's rounded grayscale and contrast mean shift the blend by up to |1 - factor| levels)."""
    T = timm_aa()
    from PIL import Image

    image = structured_image(H, W)
    pil = Image.fromarray(image)
    hparams = dict(translate_const=250, img_mean=TIMM_FILL, interpolation=Image.BILINEAR)
    cases = [(op, level, negate) for op in range(15) for level in (3.3, 6.6, 9.0) for negate in (False, True)]
    posterize_0 = (A.RAND_AUGMENT_OPS.index("PosterizeIncreasing"), 10.0, False)  # 0 bits
    ops, levels, negates = (jnp.asarray(c) for c in zip(*cases, posterize_0))
    args = ra_args(ops, levels, negates)
    layer = jax.jit(jax.vmap(A._ra_apply, in_axes=(None, 0, 0, None, None)))
    ours = np.asarray(layer(image, ops, args, True, jnp.asarray(TIMM_FILL, jnp.float32)))
    inside = np.asarray(layer(np.full_like(image, 255), ops, args, True, jnp.zeros(3, jnp.float32))) == 255
    geometric = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
    for (op, level, negate), out, inner in zip(cases, ours, inside):
        name = A.RAND_AUGMENT_OPS[op]
        monkeypatch.setattr(T.random, "random", lambda negate=negate: 0.9 if negate else 0.1)
        ref = np.asarray(T.AugmentOp(name, prob=1.0, magnitude=level, hparams=hparams)(pil))
        if name in geometric:
            assert inner.mean() > 0.4, (name, level)
            d = out.astype(int) - ref.astype(int)
            assert np.abs(d[inner]).max() <= 1 and d[inner].mean() < 0.6, (name, level, negate)
            assert np.abs(d).mean() < 3, (name, level, negate)
        else:
            worst, mean = diff_stats(out, ref)
            assert worst <= 1 and mean < 0.7, (name, level, negate, worst, mean)
    # Level 10 posterizes to 0 bits: a black image, as torchvision's posterize (the installed Pillow refuses
    # bits=0, so timm raises there).
    assert not np.any(ours[-1])


# ---------------------------------------------------------------- RandAugment batched


def own_rand_augment_op(image, name, arg):
    """The op `name` with timm's argument `arg`, through this module's public op functions."""
    h, w, _ = image.shape
    geometric = {
        "Rotate": ("rotate", arg),
        "ShearX": ("shear_x", arg),
        "ShearY": ("shear_y", arg),
        "TranslateXRel": ("translate_x", -arg * w),  # PIL's translate: positive moves left
        "TranslateYRel": ("translate_y", -arg * h),
    }
    if name in geometric:
        op, magnitude = geometric[name]
        return jitted_op(op, "bilinear")(image, magnitude, TIMM_FILL)
    plain = {"AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert"}
    if name in plain:
        return jitted_op(plain[name])(image)
    if name == "PosterizeIncreasing":
        return jitted_op("posterize")(image, int(arg))
    op = {
        "SolarizeIncreasing": "solarize",
        "SolarizeAdd": "solarize_add",
        "ColorIncreasing": "color",
        "ContrastIncreasing": "contrast",
        "BrightnessIncreasing": "brightness",
        "SharpnessIncreasing": "sharpness",
    }[name]
    return jitted_op(op)(image, arg)


# 32x32 like the TrivialAugmentWide tests, so that the op compilations are shared.
RA_IMAGES = np.stack([structured_image(32, 32, seed=s) for s in range(16)])


@functools.cache
def jitted_ra():
    """rand_augment with 2 layers, compiled once: call it with float32 arrays for the traced arguments."""
    ra = jax.jit(functools.partial(A.rand_augment, num_layers=2))
    return lambda key, images, m, s, p: ra(
        key, images, magnitude=jnp.float32(m), magnitude_std=jnp.float32(s), probability=jnp.float32(p)
    )


def test_rand_augment_is_its_ops_in_sequence():
    """Two layers, probability 0.5: every image is exactly the chosen ops, applied or not, in order."""
    images, key = RA_IMAGES, jax.random.key(11)
    f = jitted_ra()
    out = np.asarray(f(key, images, 9.0, 0.5, 0.5))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(f(key, images, 9.0, 0.5, 0.5)))
    assert not np.array_equal(out, np.asarray(f(jax.random.key(12), images, 9.0, 0.5, 0.5)))
    ops, args, apply = map(np.asarray, A.rand_augment_choices(key, len(images), 9.0, 0.5, 2, 0.5))
    assert ops.shape == args.shape == apply.shape == (len(images), 2)
    assert 0 < apply.sum() < apply.size
    for image, o, op_row, arg_row, apply_row in zip(images, out, ops, args, apply):
        expected = image
        for op, arg, on in zip(op_row, arg_row, apply_row):
            if on:
                expected = np.asarray(own_rand_augment_op(expected, A.RAND_AUGMENT_OPS[op], float(arg)))
        np.testing.assert_array_equal(o, expected)


def test_rand_augment_probability_zero_and_magnitude_zero():
    images, key = RA_IMAGES, jax.random.key(5)
    f = jitted_ra()
    np.testing.assert_array_equal(np.asarray(f(key, images, 10.0, 0.5, 0.0)), images)
    # Magnitude 0: every op is the identity except the four without a neutral level.
    out = np.asarray(f(key, images, 0.0, 0.0, 1.0))
    ops = np.asarray(A.rand_augment_choices(key, len(images), 0.0, 0.0, 2, 1.0)[0])
    non_neutral = {
        "AutoContrast": A.autocontrast,
        "Equalize": A.equalize,
        "Invert": A.invert,
        "PosterizeIncreasing": lambda x: A.posterize(x, 4),
    }
    names = [A.RAND_AUGMENT_OPS[op] for op in ops.ravel()]
    assert any(n in non_neutral for n in names) and any(n not in non_neutral for n in names)
    unchanged = 0
    for image, o, row in zip(images, out, ops):
        expected = image
        for op in row:
            name = A.RAND_AUGMENT_OPS[op]
            expected = np.asarray(non_neutral[name](expected)) if name in non_neutral else expected
        np.testing.assert_array_equal(o, expected)
        unchanged += np.array_equal(o, image)
    assert 0 < unchanged < len(images)


def test_rand_augment_traced_magnitude_under_vmap():
    images, key = RA_IMAGES, jax.random.key(2)
    sweep = jax.jit(jax.vmap(lambda m, s: A.rand_augment(key, images, magnitude=m, magnitude_std=s, probability=1.0)))
    magnitudes = jnp.asarray([0.0, 5.0, 10.0])
    stds = jnp.asarray([0.0, 0.5, 1.0])
    out = np.asarray(sweep(magnitudes, stds))
    assert out.shape == (3, *images.shape) and out.dtype == np.uint8
    f = jitted_ra()
    for i in range(3):
        np.testing.assert_array_equal(out[i], np.asarray(f(key, images, magnitudes[i], stds[i], 1.0)))
    assert not np.array_equal(out[0], out[2])


def test_rand_augment_choices_distribution():
    n = 20_000
    choose = jax.jit(A.rand_augment_choices, static_argnums=(1, 4))
    ops, args, apply = map(np.asarray, choose(jax.random.key(0), n, 9.0, 0.5, 2, 0.5))
    counts = np.bincount(ops.ravel(), minlength=15)
    assert np.all(np.abs(counts - 2 * n / 15) < 0.1 * 2 * n / 15), counts
    assert 0.48 < apply.mean() < 0.52
    # Rotate's argument is +-3 * level: level ~ N(9, 0.5) clipped to [0, 10], sign +-1 with probability 1/2.
    rotate = args[ops == A.RAND_AUGMENT_OPS.index("Rotate")]
    level = np.abs(rotate) / 3.0
    assert level.max() <= 10.0 + 1e-5 and abs(level.mean() - 9.0) < 0.05 and abs(level.std() - 0.5) < 0.05
    assert 0.45 < np.mean(rotate < 0) < 0.55
    # magnitude_std above 100 (timm: "mstd101", or inf): uniform in [0, magnitude].
    ops, args, _ = map(np.asarray, choose(jax.random.key(1), n, 8.0, float("inf"), 2, 1.0))
    level = np.abs(args[ops == A.RAND_AUGMENT_OPS.index("Rotate")]) / 3.0
    assert level.min() >= 0 and level.max() <= 8.0 and abs(level.mean() - 4.0) < 0.15
    # magnitude_std 0: the level is the magnitude.
    ops, args, _ = map(np.asarray, choose(jax.random.key(2), n, 7.0, 0.0, 2, 1.0))
    np.testing.assert_allclose(np.abs(args[ops == A.RAND_AUGMENT_OPS.index("Rotate")]), 21.0, rtol=1e-6)
