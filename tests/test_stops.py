"""Every way a run stops ends in one line and its exit status, loses nothing
written, and the same command resumes: Ctrl-C (once: save and stop; twice, or
before training began: at once), a workdir or checkpoints/ that cannot be
written, out of device memory, a config file that does not load; and a
resumed run records each step once (docs/faults.md)."""

import errno
import glob
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import cli_args, env_with_devices, tensorboard_events, tiny_config, wait_for

import resnet_jax.training.loop as loop
from resnet_jax.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, exit_on_user_error
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.events import EventWriter
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.metrics import drop_records_after

# 48 training images in batches of 16: 3 steps an epoch, each evaluated and saved.
FAST = {"data.pipeline": "device"}
NOTE = "Ctrl-C: saving a checkpoint, then stopping (Ctrl-C again stops at once)"
OOM = "RESOURCE_EXHAUSTED: Out of memory allocating 123456789 bytes."


@pytest.fixture(scope="module")
def straight(image_folder, tmp_path_factory):
    """A run of 9 steps in one go: checkpoints at steps 3, 6 and 9."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train_and_evaluate(tiny_config(image_folder, num_train_steps=9, **FAST), workdir)
    return workdir


@pytest.fixture(scope="module")
def at_step_3(image_folder, tmp_path_factory):
    """A run of 3 steps (a checkpoint at step 3), to copy."""
    workdir = str(tmp_path_factory.mktemp("at_step_3"))
    train_and_evaluate(tiny_config(image_folder, num_train_steps=3, **FAST), workdir)
    return workdir


def copy_of(workdir, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(workdir, target)
    return target


def as_train_py(capfd, run, *printed):
    """Runs `run()` as train.py's main does; returns its exit status and the
    lines it printed on stderr after the last progress bar (and checks that
    the `printed` lines came before)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        with exit_on_user_error():
            run()
    err = capfd.readouterr().err
    assert "Traceback" not in err and all(line in err for line in printed), err[-3000:]
    return stop.value.code, after_last_bar(err)


def after_last_bar(err):
    """The lines of `err` after the last progress bar's."""
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    last_bar = max((k for k, line in enumerate(lines) if "%|" in line), default=-1)
    return lines[last_bar + 1 :]


def leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_end(workdir, straight):
    """The run in `workdir` ended with the parameters (and every other array) of
    the uninterrupted run, and recorded each step as that run did, once."""
    resumed, expected = leaves(Checkpointer(workdir).restore_tree(9)), leaves(Checkpointer(straight).restore_tree(9))
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert recorded(workdir) == recorded(straight)
    assert event_steps(workdir) == event_steps(straight)


def recorded(workdir):
    return [(r["step"], r["split"]) for r in map(json.loads, open(f"{workdir}/metrics.jsonl"))]


def event_steps(workdir):
    """The steps of every ``train/loss`` and ``eval/top1`` event of the workdir's TensorBoard files, in order."""
    events = tensorboard_events(f"{workdir}/tensorboard")
    return [(e.step, v.tag) for e in events for v in e.summary.value if v.tag in ("train/loss", "eval/top1")]


def files(workdir):
    """Every file of `workdir` (but the lock) with its contents."""
    out = {}
    for path in glob.glob(f"{workdir}/**", recursive=True):
        if os.path.isfile(path) and os.path.basename(path) != "lock":
            out[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return out


def test_ctrl_c_during_a_save_finishes_it_then_saves_stops_and_the_same_command_resumes(
    straight, tiny, tmp_path, capfd, monkeypatch
):
    """Ctrl-C comes in the middle of step 3's (asynchronous) save: that save is
    finished, step 4 is trained and saved, and the run stops with status 130."""
    workdir = str(tmp_path / "run")
    write, calls = ocp.PyTreeCheckpointHandler.async_save, []

    async def ctrl_c_midway(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return await write(self, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", ctrl_c_midway)
    config = tiny(num_train_steps=9, async_checkpoints=True, **FAST)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(config, workdir), NOTE)
    assert status == EXIT_INTERRUPTED == 130
    assert tail == [f"Ctrl-C: saved a checkpoint at step 4 of 9 in {workdir}/checkpoints; the same command resumes"]
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3", "4"]  # both whole, no temporary folder
    assert recorded(workdir)[-2:] == [(3, "eval"), (4, "train")]
    monkeypatch.undo()
    train_and_evaluate(config, workdir)
    assert_same_end(workdir, straight)


def test_a_second_ctrl_c_stops_at_once_and_the_replayed_steps_are_recorded_once(
    straight, at_step_3, tiny, tmp_path, capfd, monkeypatch
):
    """Ctrl-C before training began stops at once; two Ctrl-Cs before step 6
    stop without saving (step 3 stays the latest); the records of the steps
    after 3 that the resumed run trains again are replaced, in metrics.jsonl
    and TensorBoard."""
    workdir = str(tmp_path / "run")
    load = loop.make_pipeline

    def load_then_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return load(*args, **kwargs)

    monkeypatch.setattr(loop, "make_pipeline", load_then_ctrl_c)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(tiny(num_train_steps=9, **FAST), workdir))
    assert (status, tail) == (130, ["Ctrl-C: stopped before training began (nothing new to save); the same "
                                    "command resumes"])  # fmt: skip
    assert not os.path.exists(f"{workdir}/checkpoints") and not os.path.exists(f"{workdir}/metrics.jsonl")
    monkeypatch.undo()

    shutil.rmtree(workdir)
    workdir = copy_of(at_step_3, tmp_path)
    compile_step = loop.compile_train_step

    def twice_at_step_6(*args, **kwargs):
        step, calls = compile_step(*args, **kwargs), []

        def run(*a):
            calls.append(1)
            if len(calls) == 3:  # the resumed run's third step: step 6
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return step(*a)

        return run

    monkeypatch.setattr(loop, "compile_train_step", twice_at_step_6)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(tiny(num_train_steps=9, **FAST), workdir))
    assert status == 130
    assert tail[-2:] == [
        NOTE,
        f"Ctrl-C again: stopped at once, saving nothing new; the latest checkpoint is step 3 in {workdir}/checkpoints;"
        " the same command resumes",
    ]
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]
    assert (4, "train") in recorded(workdir)  # written before the stop: trained again below
    monkeypatch.undo()
    train_and_evaluate(tiny(num_train_steps=9, **FAST), workdir)
    assert_same_end(workdir, straight)


def test_sigterm_during_an_evaluation_abandons_it_saves_and_the_resumed_run_evaluates_that_step_first(
    straight, at_step_3, tiny, tmp_path, capfd, monkeypatch
):
    """SIGTERM after the first of the two batches of step 6's evaluation: no
    other batch is evaluated, step 6 is saved without an evaluation, one line
    and status 3; the same command evaluates step 6 first, then trains on to
    the uninterrupted run's end and records."""
    workdir = copy_of(at_step_3, tmp_path)
    load, fed = loop.make_pipeline, []

    def sigterm_after_the_first_batch(*args, **kwargs):
        pipeline = load(*args, **kwargs)
        batches = pipeline.eval_batches

        def eval_batches():
            for k, batch in enumerate(batches()):
                if k == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                fed.append(k)
                yield batch

        pipeline.eval_batches = eval_batches
        return pipeline

    monkeypatch.setattr(loop, "make_pipeline", sigterm_after_the_first_batch)
    config = tiny(num_train_steps=9, eval_batch_size=8, **FAST)  # 15 test images: two batches
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(config, workdir))
    assert (status, tail) == (3, [f"SIGTERM: stopped the evaluation of step 6 and saved a checkpoint at step 6 of 9 "
                                  f"in {workdir}/checkpoints; the same command resumes, evaluating step 6 first"])
    assert fed == [0, 1]  # the batch read after the SIGTERM was not evaluated, nor any after it
    assert Checkpointer(workdir).all_steps() == [3, 6] and Checkpointer(workdir).metadata(6)["metrics"] is None
    assert recorded(workdir)[-2:] == [(5, "train"), (6, "train")]
    monkeypatch.undo()
    capfd.readouterr()
    train_and_evaluate(config, workdir)
    assert "epoch   2 step      6 | eval loss" in capfd.readouterr().out  # step 6 evaluated first
    assert_same_end(workdir, straight)


def test_sighup_saves_and_stops_unless_ignored_as_under_nohup(at_step_3, tiny, tmp_path, capfd, monkeypatch):
    """A closed terminal (SIGHUP) saves and stops like SIGTERM (status 3); under
    ``nohup`` (SIGHUP ignored) the run goes on to its end."""
    workdir = copy_of(at_step_3, tmp_path)
    compile_step = loop.compile_train_step

    def sighup_at_first_step(*args, **kwargs):
        step, calls = compile_step(*args, **kwargs), []

        def run(*a):
            calls.append(1)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGHUP)
            return step(*a)

        return run

    monkeypatch.setattr(loop, "compile_train_step", sighup_at_first_step)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (the suite may run under nohup)
    try:
        status, tail = as_train_py(capfd, lambda: train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir))
        assert (status, tail) == (3, [f"SIGHUP: saved a checkpoint at step 4 of 6 in {workdir}/checkpoints; the "
                                      "same command resumes"])  # fmt: skip
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert Checkpointer(workdir).all_steps() == [3, 4, 6]


def test_records_after_the_resumed_step_and_a_record_cut_off_midway_are_dropped(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)]
    (workdir / "metrics.jsonl").write_text("".join(lines) + '{"step": 5, "spl')  # SIGKILL in the middle of a line
    writer = EventWriter(str(workdir / "tensorboard"))
    for s in (1, 2, 3, 4):
        writer.add(s, [("train/loss", 1.0)])
    writer.close()
    [events] = glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    with open(events, "ab") as f:
        f.write(struct.pack("<Q", 100) + b"\0" * 20)  # a frame cut off midway
    drop_records_after(str(workdir), 3)
    assert (workdir / "metrics.jsonl").read_text() == "".join(lines[:3])
    assert event_steps(str(workdir)) == [(1, "train/loss"), (2, "train/loss"), (3, "train/loss")]
    before = files(str(workdir))
    drop_records_after(str(workdir), 3)  # nothing after step 3: nothing rewritten
    assert files(str(workdir)) == before and not glob.glob(f"{workdir}/**/*.tmp", recursive=True)


@pytest.mark.slow
def test_train_py_ctrl_c_a_broken_config_file_and_grain_out_of_memory(image_folder, tmp_path):
    """From a terminal: Ctrl-C in train.py saves, says so and exits 130; a config
    file with a syntax error is one line naming its file and line (status 2);
    out of memory on the Grain pipeline is one line, and its worker processes
    leave no shared memory behind (no resource-tracker warning)."""
    workdir = tmp_path / "run"
    args = cli_args(image_folder, workdir, "--config.num_epochs=1000", "--config.eval_every_epochs=1000")
    proc = subprocess.Popen(args, env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    step = Checkpointer(str(workdir)).latest_step()
    assert 6 <= step < 3000 and sorted(os.listdir(workdir / "checkpoints")) == sorted(
        str(s) for s in Checkpointer(str(workdir)).all_steps()
    )
    tail = after_last_bar(err)
    assert NOTE in err and len(tail) <= 2 and tail[-1] == (
        f"Ctrl-C: saved a checkpoint at step {step} of 3000 in {workdir}/checkpoints; the same command resumes"
    ), err[-3000:]
    assert recorded(str(workdir))[-1] == (step, "train")

    broken = tmp_path / "broken.py"
    broken.write_text("from resnet_jax.config import default_config\ndef get_config()\n    return default_config()\n")
    args[args.index("--config") + 1] = str(broken)
    out = subprocess.run(args, env=env_with_devices(1), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert re.fullmatch(rf"error: config file {broken} line 2: SyntaxError: [^\n]+\n", out.stderr), out.stderr

    script = textwrap.dedent(f"""
        import runpy, sys, jax
        import resnet_jax.training.loop as loop

        def step_out_of_memory(*args, **kwargs):
            def run(*a):
                raise jax.errors.JaxRuntimeError({OOM!r})
            return run

        loop.compile_train_step = step_out_of_memory
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    grain = cli_args(image_folder, tmp_path / "grain", "--config.data.pipeline=grain", "--config.data.workers=1")
    out = subprocess.run([sys.executable, "-c", script, *grain[1:]], env=env_with_devices(1), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr and "leaked" not in out.stderr, out.stderr[-3000:]
    [line] = after_last_bar(out.stderr)
    assert line.startswith("error: out of cpu device memory in training: cifar_resnet20 at 16 images per device"), line


def refuse(monkeypatch, under, error=errno.EROFS):
    """`os.open` of any path under `under` fails as on a read-only mount."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(under)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)


def test_a_workdir_or_checkpoints_folder_that_cannot_be_written_is_one_line(
    at_step_3, tiny, tmp_path, capfd, monkeypatch
):
    workdir = copy_of(at_step_3, tmp_path)
    before = files(workdir)
    config = tiny(num_train_steps=6, **FAST)

    refuse(monkeypatch, workdir)  # a finished run copied to a read-only mount
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(config, workdir))
    assert status == EXIT_USER_ERROR
    assert tail == [
        f"error: cannot write {workdir}/lock (Read-only file system): training writes its lock, checkpoints and "
        "metrics in the workdir (--mode=eval and predict only read it); make it writable (or copy the run to a "
        "writable place), then run the same command to resume"
    ]
    monkeypatch.undo()

    refuse(monkeypatch, f"{workdir}/checkpoints", errno.EACCES)  # only checkpoints/ read-only: no word of disk space
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(config, workdir))
    assert status == EXIT_USER_ERROR
    assert tail == [
        f"error: cannot write {workdir}/checkpoints (Permission denied): checkpoints go there; make it writable "
        "(or copy the run to a writable place), then run the same command to resume"
    ]
    monkeypatch.undo()
    assert files(workdir) == before  # refused before anything was written

    async def denied(*args, **kwargs):  # made read-only while the run trains
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", denied)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(config, workdir))
    assert status == EXIT_USER_ERROR and len(tail) == 1, tail
    assert re.fullmatch(r"error: could not save step 6 .*Permission denied.*; steps \[3\] are intact: make it "
                        r"writable \(or copy the run to a writable place\) and run the same command to resume",
                        tail[0]), tail  # fmt: skip
    monkeypatch.undo()
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]
    train_and_evaluate(config, workdir)  # writable again: resumes
    assert Checkpointer(workdir).all_steps() == [3, 6]


def test_out_of_device_memory_is_one_line_naming_what_to_lower(at_step_3, tiny, tmp_path, capfd, monkeypatch):
    """XLA's RESOURCE_EXHAUSTED from the compiled step (or the evaluation) is one
    line: model, images per device, image size, the allocation and the device's
    memory, what to lower; the checkpoints written stay."""
    workdir = copy_of(at_step_3, tmp_path)
    before = files(workdir)

    def step_out_of_memory(*args, **kwargs):
        def run(*a):
            raise jax.errors.JaxRuntimeError(OOM)

        return run

    monkeypatch.setattr(loop, "compile_train_step", step_out_of_memory)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir))
    assert status == EXIT_USER_ERROR and len(tail) == 1, tail
    devices = jax.device_count()
    assert tail[0].startswith(
        f"error: out of cpu device memory in training: cifar_resnet20 at {16 // devices} images per device "
        f"(batch_size=16 over {devices} devices) of 16 px: the allocation needed 117.7 MiB, the device has "
    ), tail
    assert "; lower batch_size (and the learning rate with it), or data.image_size, or set half_precision=True" in (
        tail[0]
    )
    monkeypatch.undo()
    assert open(f"{workdir}/metrics.jsonl", "rb").read() == before["metrics.jsonl"]
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]

    def evaluation_out_of_memory(*args, **kwargs):
        def evaluate(variables, batches):
            raise jax.errors.JaxRuntimeError(OOM)

        return evaluate

    monkeypatch.setattr(loop, "make_evaluator", evaluation_out_of_memory)
    status, tail = as_train_py(capfd, lambda: train_and_evaluate(tiny(num_train_steps=6, **FAST), workdir))
    assert status == EXIT_USER_ERROR and len(tail) == 1, tail
    assert f"in the evaluation: cifar_resnet20 at {16 // devices} images per device (eval_batch_size=16 over " \
        f"{devices} devices)" in tail[0]
    assert "; lower eval_batch_size (XLA: RESOURCE_EXHAUSTED" in tail[0]
    monkeypatch.undo()
    assert open(f"{workdir}/metrics.jsonl", "rb").read().startswith(before["metrics.jsonl"])
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3"]


CTRL_C_IN_A_COMPILATION = textwrap.dedent("""
    import os, signal, sys, threading
    import jax, jax.numpy as jnp
    from resnet_jax.errors import exit_on_user_error, run_main, stops_held, stops_raise

    def f(x):
        for i in range(400):
            x = jnp.tanh(x @ x + i)
        return x

    def main():
        with exit_on_user_error(), stops_raise("a compilation", "nothing was written"):
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            jax.jit(f).lower(jnp.ones((8, 8))).compile()  # a few seconds: the Ctrl-C comes in the middle
            with stops_held():  # as predict prints: a Ctrl-C Python dropped (in a gc callback) is raised here
                print("compiled before the Ctrl-C", file=sys.stderr)

    run_main(main)
""")


def test_ctrl_c_in_the_middle_of_a_compilation_is_one_line_and_status_130():
    """A Ctrl-C that comes inside a JAX call (a compilation), as the commands that stop at once take it
    (`errors.stops_raise`): one line and status 130, not a segmentation fault in XLA's threads at the
    interpreter's shutdown (`errors.exit_now`), nor, when it lands in JAX's garbage-collection callback
    (where Python drops an exception: 2 and 4 runs in 8 on a loaded 2-core CPU with a bare KeyboardInterrupt),
    a run that goes on with status 0."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_COMPILATION], env=env_with_devices(1),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "Ctrl-C: a compilation stopped; nothing was written\n"), (
        proc.stderr[-2000:]
    )


@pytest.mark.parametrize("signum, line", [
    (signal.SIGINT, "Ctrl-C: train.py stopped while starting; nothing was written"),
    (signal.SIGTERM, "SIGTERM: train.py stopped while starting; nothing was written"),
], ids=["ctrl-c", "sigterm"])  # fmt: skip
def test_train_py_stopped_while_it_starts_is_one_line(image_folder, tmp_path, signum, line):
    """A Ctrl-C or SIGTERM during train.py's imports (before its `main`): one line and status 130 or 3, no
    traceback, no workdir made."""
    args = cli_args(image_folder, tmp_path / "run")
    proc = subprocess.Popen(args, env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip

    def catches_it() -> bool:  # the process catches the signal once train.py's first statement has run
        status = open(f"/proc/{proc.pid}/status").read()
        return bool(int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16) & (1 << (signum - 1)))

    wait_for(catches_it, proc)  # its first statement: JAX is still to be imported
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130 if signum == signal.SIGINT else 3, line + "\n"), err
    assert not (tmp_path / "run").exists()
