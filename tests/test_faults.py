"""Faults that long runs meet: damaged checkpoints, a second launch, a conversion
into a run, divergence, changed settings on resume, a full disk. Each ends in a
correct recovery or one error naming the problem, and loses nothing written."""

import asyncio
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, make_image_folder
from orbax.checkpoint._src.path import atomicity

import resnet_jax
from resnet_jax import convert, models, parallel
from resnet_jax.data import make_pipeline
from resnet_jax.errors import (
    CheckpointDamagedError,
    CheckpointMismatchError,
    CheckpointWriteError,
    ConfigError,
    DatasetError,
    DivergedError,
    Preempted,
    WorkdirBusyError,
)
from resnet_jax.training.checkpoint import DAMAGED_DIR, Checkpointer
from resnet_jax.training.loop import train_and_evaluate

# 48 training images in batches of 16: 3 steps an epoch, each evaluated and saved.
FAST = {"data.pipeline": "device"}


@pytest.fixture(scope="module")
def straight(image_folder, tmp_path_factory):
    """A run of 9 steps in one go: checkpoints at steps 3, 6 and 9."""
    from conftest import tiny_config

    workdir = str(tmp_path_factory.mktemp("straight"))
    train_and_evaluate(tiny_config(image_folder, num_train_steps=9, **FAST), workdir)
    return workdir


def copy_run(workdir, tmp_path, name="copy"):
    target = str(tmp_path / name)
    shutil.copytree(workdir, target)
    return target


def truncate_data_files(step_dir):
    """Cuts each of the step's array data files to half (a write cut off midway)."""
    paths = [p for p in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(p)]
    assert paths, step_dir
    for path in paths:
        os.truncate(path, os.path.getsize(path) // 2)


def leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_a_truncated_latest_checkpoint_is_set_aside_and_training_resumes_from_the_one_before(
    straight, tiny, tmp_path, capsys
):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir)
    truncate_data_files(f"{workdir}/checkpoints/6")
    capsys.readouterr()
    train_and_evaluate(tiny(num_train_steps=9, **FAST), workdir)
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoints/6 cannot be read" in warnings[0], out.err[-2000:]
    assert "Resumed from" in out.out and "at step 3." in out.out
    assert "Traceback" not in out.err and "Event loop is closed" not in out.err
    [aside] = os.listdir(os.path.join(workdir, DAMAGED_DIR))
    assert aside.startswith("6.")  # kept, not deleted
    assert Checkpointer(workdir).all_steps() == [3, 6, 9]  # 6 trained again; keep-3 did not count the damaged one
    resumed, expected = leaves(Checkpointer(workdir).restore_tree(9)), leaves(Checkpointer(straight).restore_tree(9))
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


@pytest.mark.parametrize("damage", ["truncated", "no state metadata", "garbage metadata"])
def test_restore_and_predict_skip_a_damaged_checkpoint_and_an_explicit_one_is_named(
    straight, tmp_path, capsys, damage
):
    workdir = copy_run(straight, tmp_path)
    step_dir = f"{workdir}/checkpoints/9"
    if damage == "truncated":
        truncate_data_files(step_dir)
    elif damage == "no state metadata":
        os.remove(f"{step_dir}/state/_METADATA")
    else:
        with open(f"{step_dir}/metadata/metadata", "wb") as f:
            f.write(bytes(range(256)))
    capsys.readouterr()
    for which in ("latest", "best"):
        _, _, info = resnet_jax.restore(workdir, which)
        assert info["step"] in (3, 6), which  # 9 is the latest and the best (top-1 1.0), but unreadable
        assert "checkpoints/9 cannot be read" in capsys.readouterr().err
    with pytest.raises(CheckpointDamagedError, match=r"checkpoints/9 cannot be read .*the other checkpoints: \[3, 6\]"):
        resnet_jax.restore(workdir, 9)
    assert os.path.isdir(step_dir)  # reading sets nothing aside
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.predict", "--workdir", workdir, str(image)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("cannot be read") == 1


def test_orbax_abandoned_reads_print_nothing_and_other_task_errors_still_do(tmp_path):
    """The reads still running when one failed end in the background; asyncio
    logs each as "Task exception was never retrieved" when it is collected (a
    page of JSON each; it made the predict run above print a traceback at
    random). A Checkpointer drops those and no other task's error."""
    script = textwrap.dedent('''
        import asyncio, gc, sys
        from resnet_jax.training.checkpoint import Checkpointer
        Checkpointer(sys.argv[1])

        async def read():
            raise Exception("Encountered error while reading array index: (slice(0, 3, 1),)")

        async def other():
            raise ValueError("a task of the user's own")

        loop = asyncio.new_event_loop()
        tasks = [loop.create_task(read()), loop.create_task(other())]
        loop.run_until_complete(asyncio.sleep(0.01))
        del tasks
        gc.collect()
    ''')
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "checkpoints")], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("Task exception was never retrieved") == 1, proc.stderr
    assert "a task of the user's own" in proc.stderr and "reading array index" not in proc.stderr


def test_a_second_run_on_a_live_workdir_is_refused_and_a_dead_ones_lock_taken_over(tiny, tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from resnet_jax.training.lock import WorkdirLock
            with WorkdirLock({str(workdir)!r}):
                print("held", flush=True)
                time.sleep(300)
        """)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=rf"in use by PID {holder.pid} on .* \(since "):
            train_and_evaluate(tiny(num_train_steps=3, **FAST), str(workdir))
        assert sorted(os.listdir(workdir)) == ["lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    capsys.readouterr()
    train_and_evaluate(tiny(num_train_steps=3, **FAST), str(workdir))
    assert f"taking over the lock of {workdir} from PID {holder.pid}" in capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    assert (workdir / "lock").read_text() == ""  # released


def test_convert_never_writes_into_a_training_run(straight, tmp_path):
    model = models.create("cifar_resnet20", num_classes=3)
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32), train=False))()
    run = copy_run(straight, tmp_path)
    before = {p: os.path.getsize(p) for p in glob.glob(f"{run}/checkpoints/**", recursive=True) if os.path.isfile(p)}
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="holds no earlier conversion"):
            convert.write_checkpoint(variables, "cifar_resnet20", run, overwrite=overwrite)
    after = {p: os.path.getsize(p) for p in glob.glob(f"{run}/checkpoints/**", recursive=True) if os.path.isfile(p)}
    assert after == before
    out = str(tmp_path / "converted")
    convert.write_checkpoint(variables, "cifar_resnet20", out, source="test 1")
    with pytest.raises(ConfigError, match=r"earlier conversion \(test 1\); pass --overwrite"):
        convert.write_checkpoint(variables, "cifar_resnet20", out, source="test 2")
    convert.write_checkpoint(variables, "cifar_resnet20", out, source="test 2", overwrite=True)
    assert resnet_jax.restore(out)[2]["source"] == "test 2"


def test_a_finite_divergence_stops_at_once_and_saves_nothing_after_it(tiny, tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny(num_train_steps=3, **FAST), workdir)
    records_before = (tmp_path / "run" / "metrics.jsonl").read_text()
    expected = r"diverged at step \d+: loss .* exceeds 109.9, .*step 3 stays the latest"
    with pytest.raises(DivergedError, match=expected) as e:
        train_and_evaluate(tiny(num_train_steps=30, learning_rate=1e4, log_every_steps=10, **FAST), workdir)
    assert "nan" not in str(e.value)  # caught while finite (1e4 reaches about 1e7 at the second step)
    assert Checkpointer(workdir).all_steps() == [3]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == records_before


def test_resume_refuses_another_batch_size_or_other_class_names(straight, image_folder, tmp_path):
    from conftest import tiny_config

    workdir = copy_run(straight, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"batch_size=16, but this run has batch_size=8"):
        train_and_evaluate(tiny_config(image_folder, num_train_steps=12, batch_size=8, **FAST), workdir)
    renamed = make_image_folder(tmp_path / "renamed")
    os.rename(f"{renamed}/train/stripes", f"{renamed}/train/zebra")
    os.rename(f"{renamed}/test/stripes", f"{renamed}/test/zebra")
    with pytest.raises(CheckpointMismatchError, match=r"class_names=\['circle', 'square', 'stripes'\]"):
        train_and_evaluate(tiny_config(renamed, num_train_steps=12, **FAST), workdir)
    assert Checkpointer(workdir).all_steps() == [3, 6, 9]


def test_rerunning_a_finished_run_trains_nothing_and_says_so(straight, image_folder, tmp_path, capsys):
    from conftest import tiny_config

    workdir = copy_run(straight, tmp_path)
    records = open(f"{workdir}/metrics.jsonl").read()
    last = Checkpointer(workdir).metadata(9)["metrics"]
    capsys.readouterr()
    for steps in (9, 6):  # the same command again; a shorter run than the one done
        assert train_and_evaluate(tiny_config(image_folder, num_train_steps=steps, **FAST), workdir) == last
        out = capsys.readouterr().out
        assert f"Nothing to train: {workdir} is at step 9 of {steps}; its last evaluation: top-1 " in out, out
        assert f"{last['top1']:.4f}" in out and "Done:" not in out
    assert open(f"{workdir}/metrics.jsonl").read() == records and Checkpointer(workdir).all_steps() == [3, 6, 9]
    with pytest.raises(ConfigError, match=r"num_epochs=0 makes a run of no steps"):
        train_and_evaluate(tiny_config(image_folder, num_epochs=0, **FAST), str(tmp_path / "none"))


def test_eval_only_classes_and_empty_class_folders_are_named(tmp_path):
    from conftest import tiny_config

    mesh = parallel.make_mesh()
    extra = make_image_folder(tmp_path / "extra", train_per_class=2, test_per_class=1)
    shutil.copytree(f"{extra}/test/circle", f"{extra}/test/unseen")
    for pipeline in ("tfds", "device"):
        with pytest.raises(DatasetError, match=r"has classes not in the training split: \['unseen'\]"):
            make_pipeline(tiny_config(extra, **{"data.pipeline": pipeline}), mesh)
    empty = make_image_folder(tmp_path / "empty", train_per_class=2, test_per_class=1)
    os.makedirs(f"{empty}/train/void")
    for pipeline in ("tfds", "device"):
        with pytest.raises(DatasetError, match=r"class folder '.*train/void' holds no images"):
            make_pipeline(tiny_config(empty, **{"data.pipeline": pipeline}), mesh)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_that_save(tiny, tmp_path, monkeypatch):
    """A disk without room for the state is refused before writing; a write that
    fails anyway (ENOSPC inside Orbax's writer) stops the run at that save, with
    its partial folder removed; the earlier checkpoints stay and resume."""
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny(num_train_steps=3, **FAST), workdir)
    usage = shutil.disk_usage(workdir)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(CheckpointWriteError, match=r"cannot save step 6 .* 0.0 MiB are free; steps \[3\] are intact"):
        train_and_evaluate(tiny(num_train_steps=9, **FAST), workdir)
    monkeypatch.undo()

    async def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    make_folder = atomicity.AtomicRenameTemporaryPath.create

    async def late_folder(self):  # a loaded machine: the step's temporary folder comes late
        await asyncio.sleep(0.5)
        return await make_folder(self)

    monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", no_space)
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "create", late_folder)
    with pytest.raises(CheckpointWriteError, match=r"could not save step 6 .*No space left on device.*steps \[3\]"):
        train_and_evaluate(tiny(num_train_steps=9, async_checkpoints=True, **FAST), workdir)
    monkeypatch.undo()
    time.sleep(1)  # nothing left behind makes the folder after the run
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]  # no partial folder left
    train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir)  # space freed: resumes
    assert Checkpointer(workdir).all_steps() == [3, 6]


def test_sigterm_while_the_run_starts_stops_it_before_training(tiny, tmp_path, monkeypatch):
    """A SIGTERM that comes while the data loads (before the first step) is not lost."""
    import resnet_jax.training.loop as loop

    original = loop.make_pipeline

    def load_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "make_pipeline", load_then_sigterm)
    with pytest.raises(Preempted, match=r"stopped before training \(at step 0 of 30\); nothing new to save"):
        train_and_evaluate(tiny(num_train_steps=30, **FAST), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints") or not os.listdir(tmp_path / "run" / "checkpoints")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
