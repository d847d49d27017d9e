"""The training crop's window on both host pipelines against torchvision's own
`RandomResizedCrop.get_params` (timm's `RandomResizedCropAndInterpolation` draws
the same way): the distributions of the window's area, aspect and horizontal
place on the same non-square images, by two-sample Kolmogorov-Smirnov tests on
4,000 draws each, with fixed seeds.

tf.data draws with `augment.tf_crop_window`, Grain with `augment.np_crop_window`:
the one sampler `augment.crop_window` behind both. TensorFlow's
`sample_distorted_bounding_box` ("tf", the Flax example's crop) must fail the
same test, which shows that the test can tell.
"""

import numpy as np
import pytest
from scipy import stats

from resnet_jax.data import augment
from resnet_jax.errors import ConfigError

torch = pytest.importorskip("torch")
tv_transforms = pytest.importorskip("torchvision.transforms")  # before TensorFlow: the other order crashes

N = 4000
SHAPES = [(375, 500), (100, 1000), (1000, 100)]  # a photo, then the fallback clamped to 4/3 and to 3/4


def torchvision_windows(height: int, width: int) -> np.ndarray:
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    draw = tv_transforms.RandomResizedCrop.get_params
    return np.array([draw(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N)], np.float64)


def tf_windows(height: int, width: int, sampler: str) -> np.ndarray:
    tf = pytest.importorskip("tensorflow")
    seeds = tf.stack([tf.fill([N], tf.constant(7, tf.int64)), tf.range(N, dtype=tf.int64)], 1)
    shape = tf.constant([height, width, 3])

    @tf.function
    def windows(seeds):
        return tf.map_fn(
            lambda seed: augment.tf_crop_window(shape, seed, sampler=sampler), seeds, fn_output_signature=tf.int32
        )

    return windows(seeds).numpy().astype(np.float64)


def grain_windows(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.array([augment.np_crop_window(rng, height, width) for _ in range(N)], np.float64)


def features(windows: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """(top, left, h, w) windows -> area fraction, log aspect (w / h), horizontal centre as a fraction."""
    top, left, h, w = windows.T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= height) and np.all(left + w <= width)
    return {"area": h * w / (height * width), "log aspect": np.log(w / h), "centre": (left + w / 2) / width}


def ks_pvalues(ours: np.ndarray, reference: np.ndarray, height: int, width: int) -> dict[str, float]:
    a, b = features(ours, height, width), features(reference, height, width)
    return {name: stats.ks_2samp(a[name], b[name]).pvalue for name in a}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_both_pipelines_draw_torchvisions_random_resized_crop(shape):
    height, width = shape
    reference, grain = torchvision_windows(height, width), grain_windows(height, width)
    for name, ours in (("tf.data", tf_windows(height, width, "torchvision")), ("grain", grain)):
        pvalues = ks_pvalues(ours, reference, height, width)
        assert min(pvalues.values()) > 1e-3, (name, pvalues)
        area = features(ours, height, width)["area"]
        assert abs(area.mean() - features(reference, height, width)["area"].mean()) < 0.02, name
    if height * 4 != width * 3:  # mostly the fallback: the whole height (width) clamped to the aspect range
        fallback = (height, round(height * 4 / 3)) if width > height else (round(width * 4 / 3), width)
        assert np.mean(np.all(reference[:, 2:] == fallback, axis=1)) > 0.5
        assert abs(np.mean(np.all(grain[:, 2:] == fallback, axis=1)) -
                   np.mean(np.all(reference[:, 2:] == fallback, axis=1))) < 0.05  # fmt: skip


def test_tensorflows_sampler_is_told_apart():
    """The Flax example's `sample_distorted_bounding_box` draws smaller windows (its height, not its area, is
    uniform): the same test rejects it, on the area above all."""
    height, width = SHAPES[0]
    reference = torchvision_windows(height, width)
    ours = tf_windows(height, width, "tf")
    pvalues = ks_pvalues(ours, reference, height, width)
    assert pvalues["area"] < 1e-9, pvalues
    area, tv_area = features(ours, height, width)["area"], features(reference, height, width)["area"]
    assert tv_area.mean() - area.mean() > 0.03 and area.min() >= 0.1 - 1e-3  # min_object_covered=0.1


def test_crop_sampler_field():
    assert augment.crop_sampler("torchvision", "grain") == "torchvision"
    assert augment.crop_sampler("tf", "tfds") == "tf"
    with pytest.raises(ConfigError, match="tfds pipeline only"):
        augment.crop_sampler("tf", "grain")
    with pytest.raises(ConfigError, match="'torchvision' or 'tf'"):
        augment.crop_sampler("timm", "tfds")


def test_the_crops_are_cut_from_the_sampled_window(tmp_path):
    """tf.data's `tf_inception_crop` and Grain's `pil_inception_crop` resize exactly the window their sampler
    draws from the same seed (then flip or not)."""
    tf = pytest.importorskip("tensorflow")
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:60, :80]
    pixels = np.stack([x * 3, y * 4, rng.integers(0, 256, (60, 80))], -1).astype(np.uint8)
    path = str(tmp_path / "image.png")
    Image.fromarray(pixels).save(path)
    encoded = tf.io.read_file(path)
    for sampler in augment.CROP_SAMPLERS:
        for k in range(4):
            seed = tf.constant([3, k], tf.int64)
            out = augment.tf_inception_crop(encoded, seed, 16, interpolation="bilinear", sampler=sampler).numpy()
            first = tf.random.experimental.stateless_split(seed, 2)[0]
            top, left, h, w = augment.tf_crop_window(tf.constant([60, 80, 3]), first, sampler=sampler).numpy()
            cut = tf.image.resize(pixels[top : top + h, left : left + w].astype(np.float32), [16, 16], antialias=True)
            want = np.clip(np.round(cut.numpy()), 0, 255).astype(np.uint8)
            assert np.array_equal(out, want) or np.array_equal(out, want[:, ::-1]), (sampler, k)
    for k in range(4):
        out = augment.pil_inception_crop(Image.open(path), np.random.default_rng(k), 16, interpolation="bilinear")
        top, left, h, w = augment.np_crop_window(np.random.default_rng(k), 60, 80)
        want = augment.decode_box(Image.open(path), (left, top, left + w, top + h), 16, "bilinear")
        assert np.array_equal(out, want) or np.array_equal(out, want[:, ::-1]), k
