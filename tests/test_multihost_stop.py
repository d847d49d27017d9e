"""A SIGTERM sent to one process only of a two-process train.py run (localhost,
gloo, one CPU device each) stops both at the same step: one checkpoint, each
process's one-line stop message, status 3; the same command resumes both.

Had each process acted on its own signal at once, the one signalled would save
(a collective) while the other ran its next step (another): both would wait
for each other for ever (the lost-process watch sees two live processes)."""

import json
import re
import signal
import socket
import subprocess
import time

import pytest
from conftest import cli_args, env_with_devices

from resnet_jax.training.checkpoint import Checkpointer

STOP_BOUND_S = 30  # signal to both exits: ~2 s to agree (stops.AGREE_SECONDS) and a save; for a loaded 2-core machine
STOPPED = re.compile(r"^SIGTERM: saved a checkpoint at step (\d+) of 3000 in (.+); the same command resumes$", re.M)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_pair(image_folder, workdir, logs, *overrides):
    """The same train.py command on processes 0 and 1 (`overrides`: more --config flags), their output
    (stdout and stderr) in `logs`."""
    env = dict(env_with_devices(1), JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_NUM_PROCESSES="2")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a gloo pair whose step comes from it hangs on jax 0.12.1
    args = cli_args(image_folder, workdir, "--config.num_epochs=1000", "--config.eval_every_epochs=1000",
                    "--config.log_every_steps=5", *overrides)  # fmt: skip
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(args, env=dict(env, JAX_PROCESS_ID=str(i)), stdout=out,
                                          stderr=subprocess.STDOUT))  # fmt: skip
    return procs


def trained_to(workdir):
    """The last step of the run's training records (process 0 writes them), 0 before the first."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def wait_both(procs, logs, until):
    """Waits for both processes until time `until`, then kills what still runs: their exit statuses
    (None if one had not ended) and their outputs."""
    try:
        for p in procs:
            p.wait(timeout=max(0.1, until - time.time()))
        statuses = [p.returncode for p in procs]
    except subprocess.TimeoutExpired:
        statuses = None
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return statuses, [log.read_text() for log in logs]


def shown(outs):
    return "\n".join(f"process {i}:\n{out[-2000:]}" for i, out in enumerate(outs))


def stop_one(procs, logs, victim, trained, seconds=120):
    """Once `trained()` (both still running), SIGTERM to `procs[victim]` only; the exit statuses,
    the outputs and the seconds from the signal to both exits. Fails (both killed) if one of them
    ends before the signal, or both have not ended `STOP_BOUND_S` after it."""
    deadline = time.time() + seconds
    while not trained():
        if not (all(p.poll() is None for p in procs) and time.time() < deadline):
            statuses, outs = wait_both(procs, logs, 0)
            pytest.fail(f"before the signal: statuses {statuses}\n{shown(outs)}")
        time.sleep(0.1)
    procs[victim].send_signal(signal.SIGTERM)
    sent = time.time()
    statuses, outs = wait_both(procs, logs, sent + STOP_BOUND_S)
    elapsed = time.time() - sent
    assert statuses is not None, f"SIGTERM to process {victim}: both still running {STOP_BOUND_S} s after it:\n" + (
        shown(outs)
    )
    return statuses, outs, elapsed


def stopped_at(statuses, outs):
    """The step both processes stopped at: each exited with status 3 and its one stop line, the same step."""
    steps = []
    for i, (status, out) in enumerate(zip(statuses, outs)):
        assert status == 3, f"process {i}: exit {status}\n{out[-3000:]}"
        assert "Traceback" not in out and "error:" not in out, f"process {i}:\n{out[-3000:]}"
        lines = STOPPED.findall(out)
        assert len(lines) == 1, f"process {i}:\n{out[-3000:]}"
        steps.append(int(lines[0][0]))
    assert steps[0] == steps[1], steps
    return steps[0]


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_both_at_the_same_step_and_the_same_command_resumes(image_folder, tmp_path):
    workdir = tmp_path / "run"
    logs = [tmp_path / "first0.txt", tmp_path / "first1.txt"]
    procs = start_pair(image_folder, workdir, logs)
    statuses, outs, first_s = stop_one(procs, logs, 1, lambda: trained_to(workdir) >= 10)
    first = stopped_at(statuses, outs)
    assert 10 <= first < 3000
    assert Checkpointer(str(workdir)).all_steps() == [first]  # the stop's save, and no other

    logs = [tmp_path / "second0.txt", tmp_path / "second1.txt"]  # the same command; now process 0 gets the signal
    procs = start_pair(image_folder, workdir, logs)
    statuses, outs, second_s = stop_one(procs, logs, 0, lambda: trained_to(workdir) >= first + 10)
    assert f"Resumed from {workdir / 'checkpoints'} at step {first}." in outs[0]
    second = stopped_at(statuses, outs)
    assert first + 10 <= second < 3000
    assert Checkpointer(str(workdir)).all_steps() == [first, second]
    print(f"stopped at steps {first} and {second}: both processes exited {first_s:.1f} s and {second_s:.1f} s "
          "after the signal")  # fmt: skip


@pytest.mark.slow
def test_time_based_checkpoints_come_at_the_same_step_on_every_process(image_folder, tmp_path):
    """``checkpoint_every_minutes``: process 0's clock, carried by the stop's agreement, decides for both.
    Each process's own clock would have them save (a collective) at different steps, and wait for ever."""
    workdir = tmp_path / "run"
    logs = [tmp_path / "out0.txt", tmp_path / "out1.txt"]
    procs = start_pair(image_folder, workdir, logs, "--config.num_train_steps=240",
                       "--config.checkpoint_every_minutes=0.001", "--config.keep_checkpoints=100")  # fmt: skip
    statuses, outs = wait_both(procs, logs, time.time() + 120)
    assert statuses == [0, 0], f"statuses {statuses}:\n{shown(outs)}"
    saved = Checkpointer(str(workdir)).all_steps()
    assert saved[-1] == 240 and len(saved) >= 2, saved  # time-based saves before the last step's
