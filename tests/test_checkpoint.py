"""Checkpoints: resume, preemption, cut-off saves, mismatches, restore, predict."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import cli_args, env_with_devices, wait_for
from PIL import Image

import resnet_jax
from resnet_jax import models, parallel, predict
from resnet_jax.data.augment import normalize
from resnet_jax.evaluate import evaluate_checkpoint
from resnet_jax.training import optim
from resnet_jax.training.checkpoint import Checkpointer, CheckpointMismatchError
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.state import create_train_state

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    """A workdir trained for one epoch on 8 devices, with an EMA."""
    from conftest import tiny_config

    workdir = tmp_path_factory.mktemp("trained")
    results = train_and_evaluate(tiny_config(image_folder, ema_decay=0.5), str(workdir))
    return str(workdir), results


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["tfds", "device"])
def test_resume_gives_the_same_parameters(tiny, tmp_path, capsys, pipeline):
    """8 steps in one go == the same run resumed from its checkpoint of step 4 (mid-epoch)."""
    cfg = {"lr_schedule": "piecewise", "lr_boundaries": (5,), "ema_decay": 0.9, "data.pipeline": pipeline,
           "checkpoint_every_steps": 4, "checkpoint_on_eval": False}  # fmt: skip
    train_and_evaluate(tiny(num_train_steps=8, **cfg), str(tmp_path / "straight"))
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")  # as if stopped after step 4's save
    assert Checkpointer(str(tmp_path / "resumed")).latest_step() == 4
    capsys.readouterr()
    train_and_evaluate(tiny(num_train_steps=8, **cfg), str(tmp_path / "resumed"))
    assert "at step 4." in capsys.readouterr().out
    a = Checkpointer(str(tmp_path / "straight")).restore_tree(8)
    b = Checkpointer(str(tmp_path / "resumed")).restore_tree(8)
    assert int(a["step"]) == int(b["step"]) == 8
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(leaves_a) == len(leaves_b)
    for path, x in leaves_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(leaves_b[path]), err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_status_3(image_folder, tmp_path):
    args = cli_args(image_folder, tmp_path, "--config.num_epochs=1000", "--config.eval_every_epochs=1000")
    proc = subprocess.Popen(args, env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)  # two epochs done
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out[-3000:]
    assert "SIGTERM: saved a checkpoint" in out and "Done" not in out
    step = Checkpointer(str(tmp_path)).latest_step()
    assert 6 <= step < 3000  # at least two epochs of 3 steps, far from the end


def test_a_save_cut_off_midway_is_never_loaded(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        import flax, jax.numpy as jnp, numpy as np
        from resnet_jax.training.checkpoint import Checkpointer

        class S(flax.struct.PyTreeNode):
            step: jnp.ndarray
            big: jnp.ndarray

        ckpt = Checkpointer({str(tmp_path)!r})
        ckpt.save(S(jnp.asarray(1), jnp.ones(10)), {{"model": "x"}})
        ckpt.wait()
        ckpt.save(S(jnp.asarray(2), jnp.ones(150_000_000)), {{"model": "x"}})
        os.kill(os.getpid(), signal.SIGKILL)  # in the middle of the asynchronous write
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env_with_devices(1), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.all_steps() == [1]
    tree = ckpt.restore_tree()
    assert int(tree["step"]) == 1 and tree["big"].shape == (10,)


def test_another_model_in_the_workdir_is_a_clear_error(trained, image_folder, monkeypatch):
    from conftest import tiny_config

    from resnet_jax.training import loop

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the checkpoint was refused")

    workdir, _ = trained
    with monkeypatch.context() as m:
        m.setattr(loop, "make_pipeline", no_data)  # refused before the data is read or a state is built
        with pytest.raises(CheckpointMismatchError, match="model='cifar_resnet20'.*model='cifar_resnet32'"):
            train_and_evaluate(tiny_config(image_folder, model="cifar_resnet32", ema_decay=0.5), workdir)
    # Restoring into a model of another number of classes names the arrays that differ.
    c = tiny_config(image_folder)
    mesh = parallel.make_mesh()
    model = models.create("cifar_resnet20", num_classes=5, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))
    tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 3, 3))
    target = create_train_state(model, tx, 16, [0], mesh)  # one member: its network's state
    with pytest.raises(CheckpointMismatchError, match=r"\['params'\]\['head'\]\['kernel'\]: checkpoint \(16, 3\)"):
        Checkpointer(workdir).restore(target)


def test_restore_rebuilds_the_model(trained, image_folder):
    workdir, results = trained
    model, variables, info = resnet_jax.restore(workdir)
    assert info["model"] == "cifar_resnet20" and info["class_names"] == ["circle", "square", "stripes"]
    assert info["step"] == 3 and info["metrics"]["top1"] == results["eval"]["top1"]
    files = [os.path.join(image_folder, "test", c, "0000.png") for c in info["class_names"]]
    images = np.stack([np.asarray(Image.open(f)) for f in files])

    logits = model.apply(variables, normalize(images, info["mean"], info["std"]), train=False)
    assert logits.shape == (3, 3)
    _, ema_variables, _ = resnet_jax.restore(workdir, "best", ema=True)
    assert not np.allclose(ema_variables["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
        resnet_jax.restore(workdir, 7)


def test_saved_on_8_devices_evaluates_on_1(trained, image_folder):
    workdir, results = trained
    proc = subprocess.run(
        cli_args(image_folder, workdir, "--mode=eval", "--step=latest"), env=env_with_devices(1),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    assert metrics["count"] == 15
    assert metrics["top1"] == pytest.approx(results["eval"]["top1"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(results["eval"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_saved_on_1_device_evaluates_on_8(image_folder, tmp_path):
    from conftest import tiny_config

    device = {"data.pipeline": "device"}  # no TensorFlow to import in the subprocess
    script = f"from conftest import tiny_config; from resnet_jax.training.loop import train_and_evaluate; " \
             f"train_and_evaluate(tiny_config({image_folder!r}, **{device!r}), {str(tmp_path)!r})"  # fmt: skip
    env = env_with_devices(1)
    env["PYTHONPATH"] = TESTS + os.pathsep + env["PYTHONPATH"]  # for conftest
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 cpu device(s)" in proc.stdout, proc.stdout[-3000:]

    saved = Checkpointer(str(tmp_path)).metadata()["metrics"]
    metrics = evaluate_checkpoint(tiny_config(image_folder, **device), str(tmp_path))
    assert jax.device_count() == 8 and metrics["count"] == saved["count"] == 15
    assert metrics["top1"] == pytest.approx(saved["top1"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(saved["loss"], rel=1e-4)


def test_predict_on_images_of_any_mode(trained, tmp_path, capsys):
    workdir, _ = trained
    rng = np.random.default_rng(0)
    files = {
        "gray.png": Image.fromarray(rng.integers(0, 255, (50, 70), np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (40, 40, 4), np.uint8), "RGBA"),
        "palette.gif": Image.fromarray(rng.integers(0, 255, (30, 20, 3), np.uint8)).convert("P"),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 255, (80, 100, 4), np.uint8), "CMYK"),
    }
    paths = []
    for name, im in files.items():
        im.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    assert predict.main(["--workdir", workdir, *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    for path in paths:
        i = out.index(path)
        lines = out[i + 1 : i + 4]  # 3 classes -> 3 lines
        probs = [float(line.split("%")[0]) / 100 for line in lines]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=2e-3)
        assert {line.split()[-1] for line in lines} == {"circle", "square", "stripes"}
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--workdir", workdir, str(bad)])
    assert stop.value.code == 2 and f"{bad}: not a readable image" in capsys.readouterr().err


def test_finetune_from_another_run(trained, tmp_path, image_folder):
    """Start from another run with the backbone frozen (params and BN statistics): only the head learns; an EMA
    starts from the loaded weights (in buffers of its own: the step donates both)."""
    from conftest import tiny_config

    source, _ = trained
    c = tiny_config(image_folder, init_from=source, freeze_backbone=True, freeze_bn=True, num_epochs=1, ema_decay=0.5)
    c.model_kwargs.zero_init_residual = False
    results = train_and_evaluate(c, str(tmp_path))
    assert results["eval"]["count"] == 15 and results["eval_ema"]["count"] == 15
    _, before, _ = resnet_jax.restore(source)
    _, after, _ = resnet_jax.restore(str(tmp_path))
    np.testing.assert_array_equal(after["params"]["stage2"]["block0"]["conv1"]["kernel"],
                                  before["params"]["stage2"]["block0"]["conv1"]["kernel"])  # fmt: skip
    np.testing.assert_array_equal(after["batch_stats"]["stem_bn"]["var"], before["batch_stats"]["stem_bn"]["var"])
    assert not np.allclose(after["params"]["head"]["kernel"], before["params"]["head"]["kernel"])


def test_finetune_backbone_lr_multiplier():
    """The backbone's update is the multiplier times the head's for the same gradient."""
    import jax.numpy as jnp
    import optax

    from resnet_jax.config import default_config

    c = default_config()
    c.momentum, c.weight_decay, c.backbone_lr_multiplier = 0.0, 0.0, 0.1
    tx = optim.make_optimizer(c, optax.constant_schedule(1.0))
    params = {"head": {"kernel": jnp.ones(2)}, "stage1": {"conv": jnp.ones(2)}}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0)
    np.testing.assert_allclose(updates["stage1"]["conv"], -0.1)


def test_keeps_the_latest_k_and_the_best(tmp_path):
    import flax
    import jax.numpy as jnp

    class S(flax.struct.PyTreeNode):
        step: jnp.ndarray
        w: jnp.ndarray

    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step, top1 in enumerate([0.5, 0.9, 0.3, 0.4, 0.2], start=1):
        ckpt.save(S(jnp.asarray(step), jnp.full(3, step)), {"model": "m"}, {"top1": top1, "loss": 1.0})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.by_preference("best")[0] == 2 and ckpt.latest_step() == 5
    assert ckpt.metadata(2)["metrics"]["top1"] == 0.9
    np.testing.assert_array_equal(ckpt.restore_tree(2)["w"], [2, 2, 2])
    ckpt.close()


def test_a_device_pipeline_run_needs_no_working_grain(tiny, tmp_path, monkeypatch):
    """A grain whose own dependency is missing (cloudpickle on the GPU image) stops
    no run that does not use it: Checkpointer imports it only if it can."""
    for name in [m for m in sys.modules if m == "grain" or m.startswith("grain.")]:
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "fake" / "grain").mkdir(parents=True)
    (tmp_path / "fake" / "grain" / "__init__.py").write_text("import cloudpickle_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    train_and_evaluate(tiny(num_train_steps=3, **{"data.pipeline": "device"}), str(tmp_path / "run"))
    assert Checkpointer(str(tmp_path / "run")).all_steps() == [3]
