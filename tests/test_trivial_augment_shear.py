"""TrivialAugmentWide's shear as torchvision 0.11 drew it (``auto_augment_shear="centre"``, the V2 recipe's),
against the call torchvision's `_apply_op` made before vision PR 5285 (commit b5aa0915,
torchvision/transforms/autoaugment.py): ``F.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
shear=[math.degrees(magnitude), 0.0], interpolation=interpolation, fill=fill)``, about the image's centre,
with torchvision's own `F.affine`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.augment import autoaugment as A
from resnet_jax.augment import batch as batch_augment
from resnet_jax.config import default_config

torch = pytest.importorskip("torch")
F = pytest.importorskip("torchvision.transforms.functional")

FILL = (10.0, 200.0, 60.0)
H, W = 27, 34


def structured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (h + w - 2)], -1)
    return np.clip(base * 0.7 + rng.integers(0, 80, (h, w, 3)), 0, 255).astype(np.uint8)


TA = jax.jit(A.trivial_augment_wide, static_argnames=("interpolation", "shear"))  # one compilation per mode


def images() -> np.ndarray:
    return np.stack([structured_image(H, W, seed=s) for s in range(48)])


def torchvision_0_11_shear(image: np.ndarray, op: str, magnitude: float, interpolation: str) -> np.ndarray:
    shear = [math.degrees(magnitude), 0.0] if op == "ShearX" else [0.0, math.degrees(magnitude)]
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    out = F.affine(tensor, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                   interpolation=F.InterpolationMode(interpolation), fill=list(FILL))  # fmt: skip
    return out.permute(1, 2, 0).numpy()


def close(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    d = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
    return int(d.max()), float(d.mean())


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_centre_shear_is_torchvision_0_11s_op(interpolation):
    """Each op, signed magnitudes up to TrivialAugmentWide's 0.99 (factor tan 0.99 = 1.52): within one grey level,
    mean < 0.01 (as the corner shear against today's torchvision); today's op is far from it."""
    image = structured_image(H, W, seed=1)
    magnitudes = [0.99, -0.99, 0.33, -0.495, 0.066, 0.0]
    for name, op in (("ShearX", A.shear_x), ("ShearY", A.shear_y)):
        run = jax.jit(jax.vmap(lambda m: op(image, jnp.tan(m), FILL, interpolation, pivot="centre")))  # noqa: B023
        ours = np.asarray(run(jnp.asarray(magnitudes, jnp.float32)))
        for m, out in zip(magnitudes, ours):
            worst, mean = close(out, torchvision_0_11_shear(image, name, m, interpolation))
            assert worst <= 1 and mean < 0.01, (name, m, worst, mean)
        today = np.asarray(op(image, 0.99, FILL, interpolation))
        assert close(today, torchvision_0_11_shear(image, name, 0.99, interpolation))[1] > 10


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_trivial_augment_wide_with_the_centre_shear(interpolation):
    """shear="centre": the images that draw ShearX/Y are torchvision 0.11's op at the drawn signed magnitude;
    every other image is what shear="corner" gives with the same key."""
    batch = images()
    key = jax.random.key(5)
    centre = np.asarray(TA(key, batch, FILL, interpolation=interpolation, shear="centre"))
    corner = np.asarray(TA(key, batch, FILL, interpolation=interpolation, shear="corner"))
    ops, args = map(np.asarray, A.trivial_augment_wide_choices(key, len(batch)))
    names = [A.TRIVIAL_AUGMENT_WIDE_OPS[o] for o in ops]
    sheared = [k for k, name in enumerate(names) if name in ("ShearX", "ShearY")]
    assert len(sheared) >= 4 and {names[k] for k in sheared} == {"ShearX", "ShearY"}
    for k in range(len(batch)):
        if k in sheared:
            worst, mean = close(centre[k], torchvision_0_11_shear(batch[k], names[k], float(args[k]), interpolation))
            assert worst <= 1 and mean < 0.01, (names[k], float(args[k]), worst, mean)
        else:
            np.testing.assert_array_equal(centre[k], corner[k], err_msg=names[k])
    with pytest.raises(ValueError, match="shear"):
        A.trivial_augment_wide(key, batch, shear="center")


def test_the_config_field_reaches_the_batch_transform():
    c = default_config()
    c.auto_augment, c.auto_augment_shear = "trivial", "centre"
    batch, key = images(), jax.random.key(2)
    out, _ = jax.jit(batch_augment.batch_transform(c, 3))(key, jnp.asarray(batch), jnp.zeros(len(batch), jnp.int32), {})
    k_auto = jax.random.split(key, 3)[0]
    want, corner = (TA(k_auto, batch, (0, 0, 0), interpolation="nearest", shear=s) for s in ("centre", "corner"))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want, np.float32))
    assert not np.array_equal(np.asarray(want), np.asarray(corner))  # the batch drew a shear
    c.auto_augment_shear = "center"
    with pytest.raises(Exception, match="auto_augment_shear"):
        batch_augment.batch_transform(c, 3)
