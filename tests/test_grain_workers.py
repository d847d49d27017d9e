"""Grain's worker processes die with the trainer however it dies: a run killed
with SIGKILL (a preemption, the OOM killer) leaves no worker and no
multiprocessing resource tracker behind."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli_args, env_with_devices, make_image_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def descendants(pid: int) -> dict[int, str]:
    """The living descendants of `pid`: pid -> command line (from /proc)."""
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            for child in children:
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as f:
                        found[child] = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and waiting for its parent to reap it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkilled_trainer_takes_its_grain_workers_and_resource_tracker_along(tmp_path):
    root = make_image_folder(tmp_path / "images", train_per_class=16, test_per_class=2)
    workdir = tmp_path / "run"
    args = cli_args(root, workdir, "--config.data.pipeline=grain", "--config.data.workers=2",
                    "--config.num_train_steps=100000", "--config.eval_every_epochs=1000",
                    "--config.checkpoint_every_steps=100000")  # fmt: skip
    log = open(tmp_path / "train.log", "w+")
    proc = subprocess.Popen(args, env=env_with_devices(1), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics, deadline = workdir / "metrics.jsonl", time.time() + 300
        while not (metrics.exists() and '"train"' in metrics.read_text()):  # the workers have fed a step
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        family = descendants(proc.pid)
        workers = [p for p, cmd in family.items() if "spawn_main" in cmd]
        assert len(workers) >= 2 and any("resource_tracker" in cmd for cmd in family.values()), family
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed, deadline = time.time(), time.time() + 10
        while any(alive(p) for p in family) and time.time() < deadline:
            time.sleep(0.2)
        left = {p: cmd for p, cmd in family.items() if alive(p)}
        assert not left, f"running {time.time() - killed:.0f} s after the trainer was killed: {left}"
        print(f"all {len(family)} gone {time.time() - killed:.1f} s after the trainer was killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the run (its process group outlives the trainer)
        proc.wait()
        log.close()
