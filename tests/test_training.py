"""The training job: pipelines, steps, the loop and its errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import NARROW_RESNET8, host_step, step_options

from resnet_jax import models, parallel
from resnet_jax.config import default_config
from resnet_jax.data import augment
from resnet_jax.data.pipeline import array_eval_batches
from resnet_jax.data.tfds import DatasetError, TFDataPipeline
from resnet_jax.training import optim, steps
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.evaluator import make_evaluator
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.metrics import LOSS
from resnet_jax.training.state import create_train_state


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_mock_tfds_train_steps(tmp_path):
    """A few steps on tfds.testing.mock_data through the real tf.data pipeline."""
    c = default_config()
    c.model_kwargs.update(NARROW_RESNET8)
    c.batch_size = c.eval_batch_size = 16
    c.num_train_steps, c.curves_every_seconds = 3, -1.0
    c.checkpoint_every_steps = 2
    c.async_checkpoints = False  # mock_data reroutes file access only inside its context
    with tfds.testing.mock_data(num_examples=40):
        results = train_and_evaluate(c, str(tmp_path))
    assert results["eval"]["count"] == 40
    assert np.isfinite(results["eval"]["loss"])
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert train[-1]["step"] == 3 and np.isfinite(train[-1]["loss"])
    assert Checkpointer(str(tmp_path)).all_steps() == [2, 3]  # every 2 steps, and the end
    assert json.load(open(tmp_path / "config.json"))["batch_size"] == 16


@pytest.mark.slow
def test_overfits_a_small_folder(tiny, tmp_path):
    """48 images, 30 epochs: the training loss falls by a large factor."""
    c = tiny(num_epochs=30, eval_every_epochs=30, learning_rate=0.02, **{"data.augment": "none"})
    c.momentum, c.weight_decay = 0.9, 0.0
    results = train_and_evaluate(c, str(tmp_path))
    train = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert train[0] > 0.5  # the first epoch starts at log(3) = 1.1
    assert train[-1] < train[0] / 20, train
    assert results["eval"]["count"] == 15


def test_one_and_eight_devices_agree():
    """Same global batch on 1 device and sharded over 8: same loss and parameters
    (batch norm reduces over the global batch)."""
    assert jax.device_count() == 8
    c = default_config()
    model = models.create("cifar_resnet20", stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))  # a narrow ResNet-8
    rng = np.random.default_rng(0)
    batches = [
        {"image": rng.integers(0, 256, (32, 16, 16, 3), np.uint8), "label": rng.integers(0, 10, 32).astype(np.int32)}
        for _ in range(3)
    ]
    c.label_smoothing = 0.1
    options = step_options(c, model)
    outcomes = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        state = create_train_state(model, options.make_tx({}), 16, [0], mesh)
        train = host_step(options, mesh)
        losses = []
        for b in batches:
            state, window = train(state, b)
            losses.append(float(window[0, LOSS]))
        outcomes.append((losses, jax.device_get(state.params), jax.device_get(state.batch_stats)))
    (l1, p1, s1), (l8, p8, s8) = outcomes
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p8, s8))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_examples", [64, 70])
def test_eval_counts_every_example_once(num_examples):
    """Padded, masked eval over 8 devices equals a direct computation over all examples."""
    c = default_config()
    mesh = parallel.make_mesh()
    model = models.create("cifar_resnet20", num_classes=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (num_examples, 8, 8, 3), np.uint8)
    labels = rng.integers(0, 3, num_examples).astype(np.int32)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    [metrics] = make_evaluator(model, c, 3, mesh, 1)(variables, array_eval_batches(images, labels, 16))
    logits = model.apply(variables, augment.normalize(images, c.data.mean, c.data.std), train=False)
    pred = np.asarray(jnp.argmax(logits, -1))
    assert metrics["count"] == num_examples
    assert metrics["top1"] == pytest.approx(np.mean(pred == labels), abs=1e-6)
    assert metrics["top5"] == 1.0  # 3 classes
    per_class = [np.mean(pred[labels == k] == k) for k in range(3)]
    np.testing.assert_allclose(metrics["per_class_accuracy"], per_class, atol=1e-5)
    loss = np.mean(np.asarray(steps.cross_entropy(logits, labels)))
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)


def test_tf_pipeline_same_seed_same_order(tiny):
    c = tiny()
    mesh = parallel.make_mesh()
    make = lambda seed: TFDataPipeline(c.data, 16, 16, seed, mesh)  # noqa: E731
    p = make(0)
    epoch0 = list(p.train_epoch(0))
    assert len(epoch0) == p.steps_per_epoch == 3
    again = list(make(0).train_epoch(0))
    for a, b in zip(epoch0, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    resumed = list(p.train_epoch(0, start_step=1))
    np.testing.assert_array_equal(resumed[0]["image"], epoch0[1]["image"])
    epoch1 = next(p.train_epoch(1))
    assert not np.array_equal(epoch1["image"], epoch0[0]["image"])
    other_seed = next(make(1).train_epoch(0))
    assert not np.array_equal(other_seed["image"], epoch0[0]["image"])
    seen = np.concatenate([b["label"] for b in epoch0])
    assert sorted(np.bincount(seen).tolist()) == [16, 16, 16]  # one epoch = each example once


def test_tf_and_device_augmentations_agree():
    """Pad-4 crop + flip: the tf.data and the on-device versions draw the same
    distribution of offsets (uniform over 9x9) and flips (1/2)."""
    import tensorflow as tf

    size, n = 8, 3000
    # Each pixel encodes its coordinates, so the crop offset and flip can be read back.
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([yy * 20 + 10, xx * 20 + 10, np.full_like(yy, 255)], -1).astype(np.uint8)

    def offsets(batch):
        out = []
        for im in batch:
            valid = im[..., 2] == 255
            ys, xs = np.nonzero(valid)
            top, left = ys.min(), xs.min()
            row = im[top, valid[top]]
            flipped = len(row) > 1 and row[0, 1] > row[-1, 1]
            dy = 4 - top if top > 0 else 4 - top + (size - valid.sum(0).max())
            out.append((top, left, valid.sum(), flipped, dy))
        return out

    jax_batch = np.asarray(augment.crop_flip(jax.random.key(0), jnp.asarray(np.repeat(image[None], n, 0))))
    tf_batch = np.stack(
        [augment.tf_crop_flip(tf.constant(image), tf.constant([0, i], tf.int64)).numpy() for i in range(n)]
    )
    stats = {}
    for name, batch in (("jax", jax_batch), ("tf", tf_batch)):
        assert batch.shape == (n, size, size, 3)
        o = offsets(batch)
        visible = np.array([v for _, _, v, _, _ in o])
        flips = np.mean([f for *_, f, _ in o])
        stats[name] = (visible.mean(), flips)
        assert abs(flips - 0.5) < 0.05, name
        # Visible pixels: (8 - |dy|)(8 - |dx|), |dy|, |dx| uniform on -4..4 -> E = (8 - 20/9)^2.
        assert visible.mean() == pytest.approx((8 - 20 / 9) ** 2, rel=0.05), name
    assert stats["jax"][0] == pytest.approx(stats["tf"][0], rel=0.05)


def test_errors_name_the_problem(tiny, tmp_path):
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        train_and_evaluate(tiny(batch_size=12), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="unknown model 'resnet_nope'.*cifar_resnet20"):
        train_and_evaluate(tiny(model="resnet_nope"), str(tmp_path / "b"))
    with pytest.raises(DatasetError, match="unknown TFDS dataset 'no_such_dataset'"):
        train_and_evaluate(tiny(**{"data.path": "", "data.name": "no_such_dataset"}), str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_and_evaluate(tiny(**{"data.path": str(tmp_path / "missing")}), str(tmp_path / "d"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    train_and_evaluate(tiny(), str(tmp_path))
    assert Checkpointer(str(tmp_path)).latest_step() == 3
    expected = r"diverged at step \d+: loss nan is not finite.*step 3 stays the latest checkpoint"
    with pytest.raises(FloatingPointError, match=expected):
        train_and_evaluate(tiny(num_epochs=2, learning_rate=1e30), str(tmp_path))
    assert Checkpointer(str(tmp_path)).latest_step() == 3


def test_schedules():
    c = default_config()
    sched = optim.learning_rate_schedule(c, 390, 64000)
    assert float(sched(0)) == pytest.approx(0.1)
    assert float(sched(32001)) == pytest.approx(0.01)
    assert float(sched(48001)) == pytest.approx(0.001)
    c.warmup_constant_steps = 400
    sched = optim.learning_rate_schedule(c, 390, 64000)
    assert float(sched(10)) == pytest.approx(0.01) and float(sched(400)) == pytest.approx(0.1)
    c = default_config()
    c.lr_schedule, c.warmup_epochs, c.lr_linear_scaling, c.batch_size = "cosine", 1, True, 512
    sched = optim.learning_rate_schedule(c, 100, 1000)
    assert float(sched(100)) == pytest.approx(0.2)  # 0.1 * 512 / 256 after warmup
    assert float(sched(50)) == pytest.approx(0.1)
    assert float(sched(1000)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_is_coupled_and_masked():
    """SGD + decay: the update is -lr * (g + wd * p) on the first step, for kernels only."""
    c = default_config()
    c.momentum, c.weight_decay, c.weight_decay_exclude_bn_bias = 0.9, 0.1, True
    tx = optim.make_optimizer(c, optax_constant(1.0))
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], np.zeros(2))


def optax_constant(value):
    import optax

    return optax.constant_schedule(value)


def test_inception_pipeline_on_photos_of_any_size(tmp_path):
    """Random-resized crops of JPEGs and PNGs of assorted sizes and modes; center
    crops at evaluation; every output is image_size x image_size RGB uint8."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(120, 90), (64, 200), (300, 300), (50, 70)]
    for split in ("train", "test"):
        for c, name in enumerate(("cats", "dogs")):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                im = Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
                if i == 1:
                    im = im.convert("L")
                im.save(d / f"{i}.{'png' if (i + c) % 2 else 'jpg'}")
    c = default_config()
    c.data.path, c.data.image_size, c.data.augment, c.data.cache = str(tmp_path), 24, "inception", False
    p = TFDataPipeline(c.data, 8, 8, 0, parallel.make_mesh())
    (batch,) = list(p.train_epoch(0))
    assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["image"].std() > 10  # real content, not padding
    (evals,) = list(p.eval_batches())
    assert evals["image"].shape == (8, 24, 24, 3) and evals["mask"].sum() == 8


def test_bad_files_are_named_before_training_or_skipped(tmp_path):
    """Both in-process pipelines, as the training loop makes them before its first step (the loop's own
    handling of a bad file met mid-run: test_grain, test_faults)."""
    import shutil

    from conftest import make_image_folder, tiny_config

    from resnet_jax import parallel
    from resnet_jax.data import make_pipeline
    from resnet_jax.data.folder import BadImageError

    root = make_image_folder(tmp_path / "imgs", train_per_class=8, test_per_class=2)
    good = tmp_path / "imgs" / "train" / "circle" / "0000.png"
    (tmp_path / "imgs" / "train" / "square" / "notes.jpg").write_text("not an image")
    data = good.read_bytes()
    (tmp_path / "imgs" / "train" / "stripes" / "cut.png").write_bytes(data[: len(data) // 2])
    shutil.copy(good, tmp_path / "imgs" / "test" / "circle" / "copy.png")
    for pipeline in ("tfds", "device"):
        c = tiny_config(root, batch_size=8, eval_batch_size=8, **{"data.pipeline": pipeline})
        with pytest.raises(BadImageError, match="2 of 26 files .* are not readable images") as e:
            make_pipeline(c, parallel.make_mesh())
        assert "notes.jpg" in str(e.value) and "cut.png" in str(e.value)
        c.data.skip_bad_images = True
        p = make_pipeline(c, parallel.make_mesh())
        assert (p.info.num_train, p.info.num_eval, p.steps_per_epoch) == (24, 7, 3)  # 24 good training images / 8
        assert len(list(p.train_epoch(0))) == 3
        assert sum(int(np.asarray(b["mask"]).sum()) for b in p.eval_batches()) == 7
