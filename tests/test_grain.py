"""The Grain pipeline: folder and TFDS ArrayRecord sources without TensorFlow,
the crops, process shares, bad files, and a run killed mid-epoch that resumes
with the same batches and ends with the same parameters."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import grain
import jax
import numpy as np
import pytest
from conftest import CLASSES, ROOT, class_image, cli_args, env_with_devices, make_image_folder, tiny_config, wait_for
from PIL import Image

from resnet_jax import parallel
from resnet_jax.data import augment, folder
from resnet_jax.data.grain import GrainPipeline
from resnet_jax.training.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def env():
    """A subprocess's environment on 1 CPU device (sharing compiled steps through conftest's persistent cache)."""
    return env_with_devices(1)


def pipeline(path, shard=None, **overrides):
    c = tiny_config(path, **{"data.pipeline": "grain", "data.workers": 0, **overrides})
    return GrainPipeline(c.data, c.batch_size, c.eval_batch_size, c.seed, parallel.make_mesh(), shard)


def file_ids(root, split):
    """Each file's pixels (as bytes) -> its index in the sorted listing."""
    listed = folder.list_split(root, split)
    return {folder.load_rgb(p).tobytes(): i for i, p in enumerate(listed.paths)}, listed.labels


def test_epochs_cover_the_share_once_and_repeat_with_the_seed(image_folder):
    ids, labels = file_ids(image_folder, "train")
    p = pipeline(image_folder, **{"data.augment": "none"})
    assert p.steps_per_epoch == 3 and p.info.num_train == 48 and p.info.num_classes == 3
    epochs = [list(p.train_epoch(e)) for e in range(2)]
    orders = []
    for batches in epochs:
        seen = [ids[im.tobytes()] for b in batches for im in b["image"]]
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[seen])
        assert sorted(seen) == list(range(48))
        orders.append(seen)
    assert orders[0] != orders[1]
    again = pipeline(image_folder, **{"data.augment": "none"})
    resumed = list(again.train_epoch(1, start_step=2))  # a fresh pipeline, straight to batch 2 of epoch 1
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0]["image"], epochs[1][2]["image"])


def test_cifar_crop_flip_matches_the_padded_image():
    image = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3) + 1
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    flips = 0
    for seed in range(40):
        out = augment.np_crop_flip(image, np.random.default_rng(seed), pad=2)
        windows = [padded[y : y + 8, x : x + 6] for y in range(5) for x in range(5)]
        plain = any(np.array_equal(out, w) for w in windows)
        flipped = any(np.array_equal(out[:, ::-1], w) for w in windows)
        assert out.shape == image.shape and plain != flipped
        flips += flipped
    assert 10 < flips < 30


def gradient_jpeg(path, width, height):
    """A JPEG whose red channel rises from left to right."""
    x = np.linspace(0, 255, width)[None, :, None]
    image = np.broadcast_to(x, (height, width, 3)) * np.array([1.0, 0.5, 0.2])
    Image.fromarray(image.astype(np.uint8)).save(path, quality=95)


def test_jpeg_crops_decode_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    gradient_jpeg(path, 2000, 1500)
    with Image.open(path) as im:
        out = augment.pil_center_crop(im, 32, 0.875)
        assert im.size == (250, 188)  # decoded at 1/8: the 32-pixel crop needs no more
    with Image.open(path) as im:  # the reference: a full decode, resize the short side to 37, crop the centre
        full = np.asarray(im.convert("RGB").resize((49, 37), Image.BICUBIC))[2:34, 8:40]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - full).mean() < 3

    crops = [augment.pil_inception_crop(Image.open(path), np.random.default_rng(s), 24) for s in range(12)]
    again = augment.pil_inception_crop(Image.open(path), np.random.default_rng(3), 24)
    np.testing.assert_array_equal(again, crops[3])
    assert all(c.shape == (24, 24, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c[:, :, 0].mean().round() for c in crops}) > 6  # windows of different places and sizes
    steps = [np.diff(c[:, :, 0].mean(axis=0)) for c in crops]  # a window of the gradient, mirrored or not
    assert all((d > -1).all() or (d < 1).all() for d in steps)
    assert 0 < sum(d.mean() > 0 for d in steps) < 12
    for c in crops:
        np.testing.assert_allclose(c[..., 1], c[..., 0] * 0.5, atol=4)


def test_inception_crops_of_photos_of_any_size_and_mode(tmp_path):
    rng = np.random.default_rng(0)
    sizes, modes = [(120, 90), (64, 200), (300, 300), (50, 70)], ["RGB", "L", "CMYK", "RGBA"]
    for split in ("train", "test"):
        for c, name in enumerate(("cats", "dogs")):
            (tmp_path / split / name).mkdir(parents=True)
            for i, ((w, h), mode) in enumerate(zip(sizes, modes)):
                im = Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).convert(mode)
                ext = {"RGBA": "png", "CMYK": "jpg"}.get(mode, ("jpg", "png")[c])
                im.save(tmp_path / split / name / f"{i}.{ext}")
    p = pipeline(str(tmp_path), batch_size=8, eval_batch_size=8, **{"data.augment": "inception", "data.image_size": 24})
    (batch,) = list(p.train_epoch(0))
    assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["image"].std() > 10  # real content, not padding
    (evals,) = list(p.eval_batches())
    assert evals["image"].shape == (8, 24, 24, 3) and evals["mask"].sum() == 8 and evals["image"].std() > 10


def test_shares_are_disjoint_and_complete_and_eval_counts_every_example_once(image_folder):
    train_ids, _ = file_ids(image_folder, "train")
    eval_ids, eval_labels = file_ids(image_folder, "test")
    sizes = {"batch_size": 8, "eval_batch_size": 4, "data.augment": "none"}
    shares = [pipeline(image_folder, grain.sharding.ShardOptions(i, 2), **sizes) for i in range(2)]
    trained, evaluated = [], []
    for p in shares:
        assert p.steps_per_epoch == 3 and p.num_eval_batches == 2  # 24 of 48 train, 8 and 7 of 15 eval
        trained.append({train_ids[im.tobytes()] for b in p.train_epoch(0) for im in b["image"]})
        for b in p.eval_batches():
            assert b["image"].shape == (4, 16, 16, 3)
            kept = b["mask"] == 1
            evaluated += [(eval_ids[im.tobytes()], label) for im, label in zip(b["image"][kept], b["label"][kept])]
    assert len(trained[0]) == len(trained[1]) == 24 and not trained[0] & trained[1]
    assert sorted(evaluated) == [(i, eval_labels[i]) for i in range(15)]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS dataset prepared as ArrayRecord files: 24 train and 7 test images of 16-20 pixels."""
    import tensorflow_datasets as tfds

    class GrainTestImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image, label = tfds.features.Image(shape=(None, None, 3)), tfds.features.ClassLabel(names=CLASSES)
            features = tfds.features.FeaturesDict({"image": image, "label": label})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(24, 0), "test": self._generate_examples(7, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield i, {"image": class_image(i % 3, rng, 16 + i % 5), "label": i % 3}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    GrainTestImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


HIDE = textwrap.dedent('''
    """Hides a package from every process started with this folder on PYTHONPATH, as if not installed."""
    import importlib.machinery
    import sys

    class Hide(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] == {package!r}:
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

    sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
''')


def hiding(package, env, tmp_path):
    """`env` with `package` hidden from Python (the processes it starts too)."""
    site = tmp_path / f"without_{package}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE.format(package=package))
    return dict(env, PYTHONPATH=os.pathsep.join([str(site), ROOT]))

TRAIN_WITHOUT_TF = textwrap.dedent("""
    import sys
    import numpy as np
    from resnet_jax import parallel
    from resnet_jax.config import default_config
    from resnet_jax.data import make_pipeline
    from resnet_jax.training.loop import train_and_evaluate

    data_dir, folder, workdir = sys.argv[1:]
    for workers, source in ((0, {"path": folder}), (1, {"name": "grain_test_images", "data_dir": data_dir})):
        c = default_config()
        c.batch_size, c.eval_batch_size, c.num_train_steps, c.eval_every_epochs = 8, 8, 2, 1000
        c.model_kwargs.stage_sizes, c.model_kwargs.stage_widths = (1, 1, 1), (4, 8, 16)  # a narrow ResNet-8
        c.data.update(pipeline="grain", workers=workers, image_size=16, **source)
        p = make_pipeline(c, parallel.make_mesh())
        batches = list(p.train_epoch(0))
        assert all(b["image"].shape == (8, 16, 16, 3) and set(b["label"]) <= {0, 1, 2} for b in batches)
        print(p.info.num_train, len(batches), int(sum(b["mask"].sum() for b in p.eval_batches())))
    results = train_and_evaluate(c, workdir)  # on the TFDS source
    assert "tensorflow" not in sys.modules and np.isfinite(results["eval"]["loss"])
    print("trained", results["eval"]["count"])
""")


@pytest.mark.slow
def test_tfds_arrayrecord_and_folder_sources_train_without_tensorflow(tfds_dir, image_folder, tmp_path, env):
    args = [sys.executable, "-c", TRAIN_WITHOUT_TF, tfds_dir, image_folder, str(tmp_path / "run")]
    proc = subprocess.run(args, env=hiding("tensorflow", env, tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["48 6 15", "24 3 7"] and lines[-1] == "trained 7", proc.stdout


WITHOUT_GRAIN = textwrap.dedent("""
    import sys
    from resnet_jax import parallel
    from resnet_jax.config import default_config
    from resnet_jax.data import make_pipeline
    from resnet_jax.errors import MissingDependencyError
    from resnet_jax.training.checkpoint import Checkpointer

    Checkpointer(sys.argv[1]).close()
    c = default_config()
    c.data.update(pipeline="grain", path=sys.argv[2])
    try:
        make_pipeline(c, parallel.make_mesh())
    except MissingDependencyError as e:
        print(e)
    assert "grain" not in sys.modules
""")


def test_without_grain_the_package_imports_and_names_the_extra(image_folder, tmp_path, env):
    args = [sys.executable, "-c", WITHOUT_GRAIN, str(tmp_path / "run"), image_folder]
    proc = subprocess.run(args, env=hiding("grain", env, tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "data.pipeline='grain' needs the grain package: pip install 'resnet-jax-flax[grain]'"


def test_bad_files_are_named_skipped_or_stop_the_run(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=4, test_per_class=2)
    (tmp_path / "imgs" / "train" / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (tmp_path / "imgs" / "test" / "circle" / "notes.png").write_text("not an image")
    small = {"batch_size": 4, "eval_batch_size": 4}
    with pytest.raises(folder.BadImageError, match="broken.jpg"):  # checked before training
        pipeline(root, **small)
    checked = pipeline(root, **small, **{"data.skip_bad_images": True})
    assert (checked.info.num_train, checked.info.num_eval) == (12, 6)

    unchecked = {**small, "data.verify_images": False, "data.workers": 1}  # met in a worker process
    p = pipeline(root, **unchecked)
    with pytest.raises(folder.BadImageError, match="broken.jpg: not a readable image.*skip_bad_images=True"):
        for epoch in range(3):  # 12 of the 13 files are read each epoch
            list(p.train_epoch(epoch))
    p.data_iterator.close()
    p = pipeline(root, **unchecked, **{"data.skip_bad_images": True})
    assert p.steps_per_epoch == 3  # 13 files, 12 trained per epoch: a stand-in takes the bad one's place
    for epoch in range(3):
        assert all(b["image"].shape == (4, 16, 16, 3) for b in p.train_epoch(epoch))
    masks = np.concatenate([b["mask"] for b in p.eval_batches()])
    assert masks.sum() == 6 and len(masks) == 8  # 7 files, 6 readable, padded to 2 batches of 4
    p.data_iterator.close()


@pytest.mark.slow
def test_iterator_state_restores_the_batches_on_any_worker_count(image_folder):
    p = pipeline(image_folder, **{"data.workers": 2})
    stream = p.train_epoch(0)
    next(stream)
    state = json.loads(json.dumps(p.data_iterator.get_state()))  # as Grain's checkpoint handler writes it
    want = [next(stream)["image"] for _ in range(2)] + [b["image"] for b in p.train_epoch(1, 0)]
    p.data_iterator.close()
    for workers in (2, 0):  # with Grain's state, and from the position alone
        again = pipeline(image_folder, **{"data.workers": workers})
        again.data_iterator.set_state(state)
        assert again.data_iterator.get_state()["grain"] == (state["grain"] if workers == 2 else None)
        got = [b["image"] for b in again.train_epoch(0, 1)] + [b["image"] for b in again.train_epoch(1, 0)]
        again.data_iterator.close()
        assert len(got) == 5
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_parameters(image_folder, tmp_path, env):
    """A run killed by SIGKILL after its checkpoint at step 4 (epoch 2, batch 1 of 3),
    restarted from it, ends step 8 with the parameters of the run that never stopped."""
    grain_run = ["--config.data.pipeline=grain", "--config.data.workers=1", "--config.lr_schedule=constant",
                 "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=100",
                 "--config.eval_every_epochs=1000"]  # fmt: skip
    killed, resumed = tmp_path / "killed", tmp_path / "resumed"
    proc = subprocess.Popen(
        cli_args(image_folder, killed, *grain_run, "--config.num_train_steps=1000"), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (killed / "checkpoints" / "8" / "commit_success.txt").exists(), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its Grain workers
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    shutil.copytree(killed / "checkpoints" / "4", resumed / "checkpoints" / "4")  # restart as if killed after step 4
    data = json.loads((resumed / "checkpoints" / "4" / "data" / "process_0-of-1.json").read_text())
    assert data["position"] == 4 and data["grain"] is not None
    out = subprocess.run(
        cli_args(image_folder, resumed, *grain_run, "--config.num_train_steps=8"), env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and "Resumed from" in out.stdout, out.stderr[-3000:]
    a = Checkpointer(str(killed)).restore_tree(8)
    b = Checkpointer(str(resumed)).restore_tree(8)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert int(a["step"]) == int(b["step"]) == 8 and len(leaves_a) == len(leaves_b) > 50
    for path, x in leaves_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(leaves_b[path]), err_msg=jax.tree_util.keystr(path))
