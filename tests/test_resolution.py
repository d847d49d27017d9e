"""FixRes (train_image_size), FFCV's progressive resizing and repeated augmentation:
the pure schedules, then both host pipelines (tf.data and Grain) over an image
folder whose images carry their identity in the red channel, so that a crop
still names its file."""

import collections

import numpy as np
import pytest
from conftest import CLASSES, tiny_config
from PIL import Image

from resnet_jax import parallel
from resnet_jax.config import default_config
from resnet_jax.data import repeated
from resnet_jax.data.resolution import train_resolution, training_sizes
from resnet_jax.errors import ConfigError

PER_CLASS = 8  # 24 training images: 3 steps of 8


def ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """libffcv/ffcv-imagenet train_imagenet.py's ImageNetTrainer.get_resolution, as a function."""
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


def data_config(**fields):
    c = default_config().data
    c.augment, c.image_size = "inception", 224
    c.update(fields)  # the new fields may not be in default_config yet
    return c


def test_progressive_resizing_is_ffcvs_ramp():
    ffcv = data_config(progressive_resizing="160:192:65:76")  # FFCV's rn50 configs
    got = [train_resolution(e, ffcv) for e in range(88)]
    assert got == [ffcv_get_resolution(e, 160, 192, 76, 65) for e in range(88)]
    assert [got[e] for e in (0, 65, 70, 71, 76, 87)] == [160, 160, 160, 192, 192, 192]
    wide = data_config(progressive_resizing="128:256:10:20")
    want = {0: 128, 10: 128, 11: 128, 12: 160, 15: 192, 17: 224, 19: 256, 20: 256, 40: 256}
    assert {e: train_resolution(e, wide) for e in want} == want
    assert all(train_resolution(e, wide) == ffcv_get_resolution(e, 128, 256, 20, 10) for e in range(30))
    assert all(train_resolution(e, wide) % 32 == 0 for e in range(30))
    assert training_sizes(wide, 30) == [128, 160, 192, 224, 256]
    assert training_sizes(ffcv, 88) == [160, 192] and training_sizes(ffcv, 60) == [160]


def test_fixres_and_defaults():
    v2 = data_config(train_image_size=176, crop_fraction=224 / 232)  # torchvision's V2 recipe
    assert {train_resolution(e, v2) for e in range(600)} == {176} and training_sizes(v2, 600) == [176]
    plain = default_config().data  # a config without the new fields trains at image_size
    assert train_resolution(5, plain) == plain.image_size and training_sizes(plain, 10) == [plain.image_size]
    assert training_sizes(data_config(train_image_size=0, progressive_resizing=""), 3) == [224]
    assert repeated.repeats(plain) == 1 and repeated.repeats(data_config(repeated_augmentations=4)) == 4
    bad = [
        dict(progressive_resizing="160:192"),
        dict(progressive_resizing="192:160:0:10"),
        dict(progressive_resizing="160:192:10:5"),
        dict(progressive_resizing="160:192:0:10", train_image_size=176),
        dict(train_image_size=-1),
        dict(train_image_size=24, augment="cifar"),
        dict(progressive_resizing="32:64:0:2", augment="none"),
    ]
    for fields in bad:
        with pytest.raises(ConfigError):
            train_resolution(0, data_config(**fields))
    assert train_resolution(0, data_config(train_image_size=224, augment="cifar")) == 224
    for r in (0, -2):
        with pytest.raises(ConfigError):
            repeated.repeats(data_config(repeated_augmentations=r))


def test_repeated_order_is_rasamplers_on_one_replica():
    """The pipelines' rule (position p of an epoch reads ``order[p // r]``, `repeated`) is RASampler's order."""
    order = np.random.default_rng(0).permutation(10)
    # torchvision's RASampler with num_replicas=1: repeat in place, keep the first num_selected
    for length, r in ((10, 3), (9, 3), (10, 4), (10, 1), (4, 10)):
        want = [i for i in order.tolist() for _ in range(r)][:length]
        assert [order[p // r] for p in range(length)] == want
        assert repeated.num_selected(length, r) == len(set(want))


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
    """24 train and 6 test PNGs of 32x32: red = 10 * (index in the listing) + 5, green and
    blue ramps along x and y (crops of different windows or flips differ there)."""
    root = tmp_path_factory.mktemp("ids")
    y, x = np.mgrid[:32, :32]
    k = 0
    for split, n in (("train", PER_CLASS), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = np.stack([np.full((32, 32), 10 * k + 5), x * 8, y * 8], -1).astype(np.uint8)
                Image.fromarray(image).save(root / split / name / f"{i:04d}.png")
                k = k + 1 if split == "train" else k
    return str(root)


def identity(image):
    return int(round((image[..., 0].mean() - 5) / 10))


def make(kind, root, **fields):
    c = tiny_config(root, batch_size=8, eval_batch_size=8, **{"data.pipeline": kind, "data.augment": "inception"})
    c.data.update({"workers": 0, **fields})
    if kind == "tfds":
        from resnet_jax.data.tfds import TFDataPipeline as cls
    else:
        from resnet_jax.data.grain import GrainPipeline as cls
    return cls(c.data, c.batch_size, c.eval_batch_size, c.seed, parallel.make_mesh())


def shapes(batches):
    return {b["image"].shape for b in batches}


@pytest.mark.parametrize("kind", ["tfds", "grain"])
def test_training_crops_at_the_epochs_size_evaluation_at_image_size(kind, id_folder):
    p = make(kind, id_folder, train_image_size=24)  # FixRes: image_size stays 16
    assert shapes(p.train_epoch(0)) == {(8, 24, 24, 3)}
    assert shapes(p.eval_batches()) == {(8, 16, 16, 3)} and p.info.image_size == 16

    p = make(kind, id_folder, progressive_resizing="32:96:1:3")
    for epoch, size in ((0, 32), (2, 64), (3, 96), (1, 32)):
        assert train_resolution(epoch, p.cfg) == size
        batches = list(p.train_epoch(epoch))
        assert len(batches) == 3 and shapes(batches) == {(8, size, size, 3)}
    assert shapes(p.eval_batches()) == {(8, 16, 16, 3)}
    if kind == "grain":
        p.data_iterator.close()


@pytest.mark.parametrize("kind", ["tfds", "grain"])
def test_repeated_augmentation(kind, id_folder):
    r = 3
    p = make(kind, id_folder, repeated_augmentations=r)
    assert p.steps_per_epoch == 3  # as without repetition
    labels_of = np.repeat(np.arange(3), PER_CLASS)
    epochs = []
    for epoch in range(2):
        batches = list(p.train_epoch(epoch))
        assert len(batches) == 3
        images = np.concatenate([b["image"] for b in batches])
        ids = np.array([identity(im) for im in images])
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels_of[ids])
        np.testing.assert_array_equal(ids, np.repeat(ids[::r], r))  # r copies in a row
        counts = collections.Counter(ids.tolist())
        assert len(counts) == 24 // r and set(counts.values()) == {r}
        for k in range(0, len(ids), r):  # each copy with its own crop and flip
            copies = [images[k + j].astype(int) for j in range(r)]
            assert all(np.abs(a - b).sum() > 0 for j, a in enumerate(copies) for b in copies[j + 1 :])
        epochs.append((batches, set(counts)))
    assert epochs[0][1] != epochs[1][1]  # another selection each epoch

    again = make(kind, id_folder, repeated_augmentations=r) if kind == "grain" else p
    resumed = list(again.train_epoch(1, start_step=1))  # restarted at step 1 of epoch 1
    assert len(resumed) == 2
    for a, b in zip(resumed, epochs[1][0][1:]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    if kind == "grain":
        p.data_iterator.close()
        again.data_iterator.close()


def test_tf_data_draws_the_repeated_examples_from_the_whole_share(id_folder):
    """With a small shuffle buffer, the selection still spans the share (not its first examples)."""
    p = make("tfds", id_folder, repeated_augmentations=4, shuffle_buffer=2)
    seen = [{identity(im) for b in p.train_epoch(epoch) for im in b["image"]} for epoch in range(4)]
    assert all(len(ids) == 6 for ids in seen)
    assert max(max(ids) for ids in seen) >= 16 and len(set().union(*seen)) > 12
