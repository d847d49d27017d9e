"""Training a study's runs: one after another in this process, or several at
once, each in a process of its own (`resnet_jax.reproduce.worker`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from resnet_jax.reproduce.study import Run, read_result
from resnet_jax.reproduce.worker import finish_run


def run_sequentially(runs: Sequence[Run], data_label: str) -> bool:
    """Trains the unfinished runs one after another in this process; returns
    False if one was stopped before its end (SIGTERM), True when all are done."""
    stop: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # between runs; training has its own
    try:
        for run in runs:
            if read_result(run) is not None:
                continue
            if stop:
                return False
            print(f"== {run.name}: {run.describe()}", flush=True)
            if finish_run(run.config, run.workdir, data_label) is None:
                print(f"== {run.name} stopped before its end; run the same command again to resume it.")
                return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


def run_in_parallel(runs: Sequence[Run], data_label: str, parallel: int) -> bool:
    """Trains the unfinished runs `parallel` at a time, each in its own process
    (`resnet_jax.reproduce.worker`, output in ``<run>/train.log``). SIGTERM is
    passed on to the runs, which save and stop; no new run starts after it."""
    todo = [r for r in runs if read_result(r) is None]
    env = dict(os.environ)
    # Each process would take 75% of a GPU's memory by default.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / parallel:.3f}")
    running: dict[subprocess.Popen, tuple[Run, Any]] = {}
    stopped = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal stopped
        stopped = True
        for proc in running:
            proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    ok = True
    try:
        while todo or running:
            while todo and len(running) < parallel and not stopped:
                run = todo.pop(0)
                os.makedirs(run.workdir, exist_ok=True)
                with open(os.path.join(run.workdir, "config.json"), "w") as f:
                    f.write(run.config.to_json_best_effort(indent=2))
                log = open(os.path.join(run.workdir, "train.log"), "a")
                cmd = [sys.executable, "-m", "resnet_jax.reproduce.worker", run.workdir, "--data-label", data_label]
                running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)] = (run, log)
                print(f"== {run.name}: started ({run.describe()}; log {run.workdir}/train.log)", flush=True)
            if stopped:
                todo = []
            for proc in [p for p in running if p.poll() is not None]:
                run, log = running.pop(proc)
                log.close()
                if read_result(run) is None:
                    ok = False
                    print(f"== {run.name}: stopped before its end (exit {proc.returncode}); see {log.name}")
                else:
                    print(f"== {run.name}: done", flush=True)
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ok and not stopped
