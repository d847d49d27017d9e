"""Every GPU figure the open issues ask for, in one call per 15-minute GPU lease:
the most valuable first, nothing lost at a limit, the study carried from one
lease to the next.

    T0=$(date +%s.%N); ...; python3 bench/gpu_suite.py --started-at $T0 --deadline-s 555 \\
        --data /tmp/d/cifar10-jpeg --data-tar data/cifar10-jpeg.tar.gz --out runs/gpu \\
        --resume-from bench/results/gpu --export $OUT
    python bench/gpu_suite.py --collect <the files back from $OUT>   # on the CPU side, after the lease
    python bench/gpu_suite.py --tiny --data <small image folder> --out /tmp/suite --plan /tmp/plan.json \\
        --seeds 1 --parallel 1   # a few steps of every item, on a CPU

Items, in order of value (``--parts`` picks some), each its own process:

1. ``speed``: ResNet-20 (batch 128, float32) bare step and the step fed by the
   on-device pipeline; ResNet-50 (224, bfloat16) at batch 256, two- and
   one-pass batch norm; both against PyTorch eager (channels-last); ResNet-50
   at batch 512; ``torch.compile`` default and reduce-overhead; max-autotune
   last, capped.
2. ``packing``: aggregate images/s of many small runs: ResNet-20 with K = 1-16
   seeds vmapped in one step, ResNet-56 with K = 1, 2, 4, N = 2, 4, 8
   concurrent processes, the same under the CUDA MPS daemon last.
3. ``study``: the paper's CIFAR-10 study at scale 1 (``python -m
   resnet_jax.reproduce``), networks in the order ResNet-20, plain-20,
   ResNet-56, plain-56, ResNet-110, then the 32- and 44-layer ones, with the
   seed count K and parallelism pinned in ``plan.json``; ``referee``: the
   PyTorch referee (bench/torch_accuracy.py, ResNet-20 then ResNet-56) beside it.

The call's deadline counts from ``--started-at`` (the command's start, before
the installs): no item starts that needs more than the seconds left, and at
``deadline - reserve`` the running item is stopped (SIGTERM, then SIGKILL); the
study saves its checkpoint. A finished item is skipped by later calls; so is one
that failed or ran past its own cap ("timed out"), unless ``--retry`` names it;
one cut short by the call's end runs again. The suite's children stay in its
process group and are stopped with it (SIGTERM to the suite stops them, builds
the carry and exports). ``<out>/summary.json`` holds every result and
``<out>/summary.md`` a row per figure (commands shell-quoted).

``--export DIR`` (the device tool's $OUT) receives, after every item and on
SIGTERM, at most 8 files: ``summary.json``, ``summary.md``, the study's
``table.md`` and ``figure.png``, and the carry: ``study.tar.gz`` (every run's
``config.json``, ``metrics.jsonl`` and ``result.json``, the study's own files,
the referee's results: small, committed) and ``ckpt.tar.000`` ... (the latest
checkpoint of each unfinished run and the unfinished referee's checkpoint, in
parts under 16 MB: carried, not committed). ``--collect`` files them on the CPU
side under ``bench/results/gpu/``; ``--resume-from`` unpacks them in the next
lease. docs/gpu.md gives the plan per lease.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import glob
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "gpu")
PARTS = ("speed", "packing", "study", "referee")
# The study's networks in order of value: the pair that shows the paper's point first, then the deep ones.
STUDY_ORDER = (
    "cifar_resnet20", "cifar_plain20", "cifar_resnet56", "cifar_plain56", "cifar_resnet110",
    "cifar_resnet32", "cifar_plain32", "cifar_resnet44", "cifar_plain44",
)  # fmt: skip
PART_BYTES = 16_000_000  # a carry part: under the device tool's 16 MiB a file
MAX_FILES = 8  # files back from $OUT
SMALL_EXPORTS = ("summary.json", "summary.md", "table.md", "figure.png", "study.tar.gz")
SKIPPED = ("failed", "timed out")  # statuses a later call does not run again (unless --retry)


@dataclass(frozen=True)
class Scale:
    """The sizes of the suite's items: full (a GPU) or tiny (a CPU test)."""

    steps: int = 200
    batch: int = 128
    seeds: tuple[int, ...] = (1, 2, 4, 8, 16)
    r56_seeds: tuple[int, ...] = (1, 2, 4)
    processes: tuple[int, ...] = (2, 4, 8)
    big_model: str = "resnet50"
    big_resolution: int = 224
    big_variants: tuple[tuple[int, bool], ...] = ((256, False), (256, True))  # (batch, one-pass BN): first
    late_variants: tuple[tuple[int, bool], ...] = ((512, False), (512, True))  # after PyTorch eager
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead")
    autotune_model: str = "resnet50"
    start_delay_s: float = 40.0  # compile time allowed before concurrent processes start timing
    need_s: float = 60.0  # seconds left for an item to start
    cap_s: float = 300.0  # an item's own limit
    compile_cap_s: float = 240.0
    autotune_cap_s: float = 180.0  # max-autotune: past this it is "timed out", and never run again
    study_need_s: float = 90.0
    stop_grace_s: float = 30.0  # after SIGTERM, for the study to save its checkpoint
    study_models: tuple[str, ...] = STUDY_ORDER
    study_args: tuple[str, ...] = ()
    referee_models: tuple[str, ...] = ("cifar_resnet20", "cifar_resnet56")
    referee_args: tuple[str, ...] = ("--device", "cuda")
    torch_device: str = "cuda"


TINY = Scale(
    steps=1, batch=16, seeds=(1, 2), r56_seeds=(), processes=(2,), big_model="cifar_resnet20", big_resolution=32,
    big_variants=((16, True),), late_variants=(), compile_modes=(), autotune_model="cifar_resnet20",
    start_delay_s=25.0, need_s=5.0, cap_s=240.0, compile_cap_s=60.0, autotune_cap_s=0.5, study_need_s=10.0,
    stop_grace_s=30.0, study_models=("cifar_resnet20", "cifar_plain20"),
    study_args=("--scale=0.004", "--evals=2", "--config.data.image_size=16", "--config.batch_size=16",
                "--config.eval_batch_size=16", "--config.log_every_steps=3"),
    referee_models=("cifar_resnet20",), torch_device="cpu",
    referee_args=("--device", "cpu", "--threads", "1", "--scale", "0.0002", "--batch-size", "16"),
)  # fmt: skip


@dataclass
class Item:
    """One figure (or the study): `run(cap)` returns its result, or None where it recorded its own."""

    name: str
    part: str
    run: Callable[[float], dict[str, Any] | None]
    need_s: float
    cap_s: float


# -- processes: the suite's children, in its process group, stopped with it ------------------------------


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; elsewhere none)."""
    kids, out, todo = _children_of(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def signal_tree(pid: int, sig: int) -> None:
    """`sig` to `pid` and every process below it (collected first: a parent's death orphans them)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def become_subreaper() -> None:
    """Orphans of the suite's children (a dead parent's workers) become its own
    children, so that it finds and stops them too (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


# -- the suite's state ------------------------------------------------------------------------------


@dataclass
class Suite:
    """The state of a suite's output folder: results so far, the call's clock, its children."""

    out: str
    data: str
    scale: Scale
    started_at: float
    deadline_s: float
    reserve_s: float
    parts: list[str]
    export_dir: str = ""
    retry: tuple[str, ...] = ()
    plan: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    signalled: str = ""
    children: list[subprocess.Popen] = field(default_factory=list)
    mps_control: str = ""  # the MPS daemon's control program while it runs

    @property
    def path(self) -> str:
        return os.path.join(self.out, "summary.json")

    @property
    def stop_at(self) -> float:
        return self.started_at + self.deadline_s - self.reserve_s

    def left(self) -> float:
        """Seconds left for work in this call (the deadline less the reserve for stopping and exporting)."""
        return self.stop_at - time.time()

    def stopping(self) -> bool:
        return bool(self.signalled) or time.time() >= self.stop_at

    @property
    def call(self) -> dict[str, Any]:
        return self.state["calls"][-1]

    def load(self) -> None:
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
        self.state.setdefault("items", {})
        self.state.setdefault("calls", []).append({
            "started": time.time(), "command_started": self.started_at, "deadline_s": self.deadline_s,
        })  # fmt: skip

    def save(self) -> None:
        self.call["seconds"] = round(time.time() - self.started_at, 1)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.path)
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(markdown(self.state))

    def result(self, name: str) -> dict[str, Any]:
        return self.state["items"].get(name, {})

    def done(self, name: str) -> bool:
        return self.result(name).get("status") == "done"

    def should_run(self, name: str) -> bool:
        """Not done, and not failed or timed out in an earlier call unless `--retry` names it (or its part,
        or its status); an item cut short by a call's end runs again."""
        status = self.result(name).get("status")
        if status == "done":
            return False
        if status in SKIPPED:
            return any(r in (name, name.split("/")[0], status, "all") for r in self.retry)
        return True

    def record(self, name: str, result: dict[str, Any]) -> None:
        result["call"] = len(self.state["calls"])
        previous = self.result(name)
        result["attempts"] = previous.get("attempts", 0) + 1
        self.state["items"][name] = result
        self.save()
        self.export()
        print(f"[{name}] {result.get('status')}: {result.get('figure', result.get('error', ''))}", flush=True)

    def log(self, name: str) -> str:
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        return os.path.join(self.out, "logs", name.replace("/", "_") + ".log")

    # children

    def spawn(self, cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`cmd` in the suite's process group (not a session of its own), output appended to `log`."""
        with open(log, "a") as f:
            f.write(f"$ {shown(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.children.append(proc)
        return proc

    def wait(self, procs: list[subprocess.Popen], cap: float, grace: float = 5.0) -> str:
        """Waits for `procs` to end: "exited"; or stops them, past `cap` seconds ("timed out") or at the
        call's end ("cut short")."""
        end = time.time() + cap
        while any(p.poll() is None for p in procs):
            if self.stopping() or time.time() >= end:
                how = "cut short" if self.stopping() else "timed out"
                self.stop(procs, grace)
                return how
            time.sleep(0.2)
        return "exited"

    def stop(self, procs: list[subprocess.Popen], grace: float) -> None:
        """SIGTERM to each process and those below it; again two thirds through `grace` (a SIGTERM during a
        trainer's start-up can go unheard); SIGKILL at its end."""
        for sig, wait in ((signal.SIGTERM, grace * 2 / 3), (signal.SIGTERM, grace / 3), (signal.SIGKILL, 10.0)):
            live = [p for p in procs if p.poll() is None]
            for p in live:
                signal_tree(p.pid, sig)
            end = time.time() + wait
            while any(p.poll() is None for p in live) and time.time() < end:
                time.sleep(0.2)

    def shutdown(self) -> None:
        """Stops every child still running (and anything below them), and the MPS daemon."""
        self.stop([p for p in self.children if p.poll() is None], self.scale.stop_grace_s)
        if self.mps_control:
            subprocess.run([self.mps_control], input="quit\n", text=True, timeout=30)
            self.mps_control = ""
        for p in descendants(os.getpid()):  # orphans adopted as subreaper
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.children:
            p.poll()

    # $OUT

    def export(self) -> None:
        if self.export_dir:
            export(self.out, self.export_dir, self.state)


def shown(cmd: list[str]) -> str:
    """A command as a person would type it (``python3`` for this interpreter), shell-quoted."""
    return shlex.join(["python3", *cmd[1:]] if cmd and cmd[0] == sys.executable else cmd)


def tail(path: str, chars: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def last_json(text: str) -> dict[str, Any]:
    """The last JSON object a benchmark printed (bench/throughput.py prints one)."""
    start = text.rfind("\n{") + 1  # 0 when the output starts with it
    return json.loads(text[start : text.index("\n}", start) + 2])


# -- items ------------------------------------------------------------------------------------------


def bench(suite: Suite, name: str, cmd: list[str], cap: float) -> dict[str, Any]:
    """One benchmark process as an item's result: done (its JSON), failed (with its log's tail), timed out
    (past its cap) or cut short (by the call's end)."""
    log = suite.log(name)
    start = os.path.getsize(log) if os.path.isfile(log) else 0
    how = suite.wait([proc := suite.spawn(cmd, log)], cap)
    with open(log, errors="replace") as f:
        f.seek(start)
        out = f.read()
    base = {"command": shown(cmd), "log": os.path.relpath(log, suite.out)}
    if how != "exited":
        error = f"past its cap of {cap:g} s" if how == "timed out" else "stopped by the call's end"
        return {**base, "status": how, "error": f"{error}: {out[-600:]}"}
    if proc.returncode != 0:
        return {**base, "status": "failed", "error": f"exit {proc.returncode}: {out[-1500:]}"}
    try:
        return {**base, "status": "done", "result": last_json(out)}
    except ValueError:
        return {**base, "status": "failed", "error": f"no JSON in its output: {out[-1500:]}"}


def _resnet20(suite: Suite, model: str = "cifar_resnet20") -> list[str]:
    return ["--model", model, "--batch", str(suite.scale.batch), "--steps", str(suite.scale.steps)]


def _throughput(suite: Suite, name: str, args: list[str], cap: float) -> dict[str, Any]:
    return figure_speed(bench(suite, name, [sys.executable, "bench/throughput.py", *args], cap))


def _torch(suite: Suite, name: str, model: str, batch: int, resolution: int, dtype: str, mode: str, cap: float,
           jax_item: str) -> dict[str, Any]:  # fmt: skip
    """PyTorch alone (bench/torch_speed.py), its ratio to the JAX figure of `jax_item` of the same call."""
    cmd = [sys.executable, "bench/torch_speed.py", "--model", model, "--batch", str(batch), "--resolution",
           str(resolution), "--dtype", dtype, "--steps", str(suite.scale.steps), "--mode", mode,
           "--device", suite.scale.torch_device]  # fmt: skip
    r = bench(suite, name, cmd, cap)
    if r["status"] == "done":
        t = r["result"]["train_images_per_s"]
        figure = f"PyTorch {mode} {t:,.0f} img/s ({r['result']['torch']}, {r['result']['device']})"
        jax = suite.result(jax_item).get("result", {}).get("train_images_per_s")
        if jax:
            r["ratio_jax_over_torch"] = jax / t
            figure += f"; JAX {jax:,.0f} ({jax_item}): ratio {jax / t:.2f}"
        r["figure"] = figure
    return r


def figure_speed(result: dict[str, Any]) -> dict[str, Any]:
    if result["status"] != "done":
        return result
    r = result["result"]
    parts = [f"JAX {r['train_images_per_s']:,.0f} img/s"]
    if "pipeline_train_images_per_s" in r:
        p = r["pipeline_train_images_per_s"]
        parts.append(f"fed by the on-device pipeline {p:,.0f} ({p / r['train_images_per_s']:.2f} of bare)")
    if r.get("mfu"):
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    parts.append(f"compile {r['compile_s']:.1f} s")
    result["figure"] = "; ".join(parts) + f"; {r['device']}"
    return result


def speed_items(suite: Suite) -> list[Item]:
    s, items = suite.scale, []

    def add(name: str, run: Callable[[float], dict[str, Any] | None], need: float = 0, cap: float = 0) -> None:
        if name not in {i.name for i in items}:  # --tiny's small model is both "ResNet-20" and "ResNet-50"
            items.append(Item(name, "speed", run, need or s.need_s, cap or s.cap_s))

    r20 = "speed/cifar_resnet20"
    add(r20, lambda cap: _throughput(suite, r20, [*_resnet20(suite), "--data", suite.data, "--pipeline", "device"],
                                     cap))  # fmt: skip
    big = ["--model", s.big_model, "--resolution", str(s.big_resolution), "--dtype", "bfloat16",
           "--steps", str(s.steps)]  # fmt: skip

    def big_item(batch: int, one_pass: bool) -> None:
        name = f"speed/{s.big_model}_b{batch}{'_one_pass' if one_pass else ''}"
        args = [*big, "--batch", str(batch), "--model-kwargs", json.dumps({"bn_one_pass": one_pass})]
        add(name, lambda cap: _throughput(suite, name, args, cap))

    def torch_item(model: str, batch: int, resolution: int, dtype: str, mode: str, jax_item: str, **kw: float) -> None:
        name = f"speed/{model}_b{batch}_torch_{mode.replace('-', '_')}"
        add(name, lambda cap: _torch(suite, name, model, batch, resolution, dtype, mode, cap, jax_item), **kw)

    for batch, one_pass in s.big_variants:
        big_item(batch, one_pass)
    b0 = s.big_variants[0][0]
    big0 = f"speed/{s.big_model}_b{b0}{'_one_pass' if s.big_variants[0][1] else ''}"
    torch_item("cifar_resnet20", s.batch, 32, "float32", "eager", r20)
    torch_item(s.big_model, b0, s.big_resolution, "bfloat16", "eager", big0)
    for batch, one_pass in s.late_variants:
        big_item(batch, one_pass)
    for mode in s.compile_modes:
        torch_item(s.big_model, b0, s.big_resolution, "bfloat16", mode, big0, cap=s.compile_cap_s)
    for mode in s.compile_modes:
        torch_item("cifar_resnet20", s.batch, 32, "float32", mode, r20, cap=s.compile_cap_s)
    # Last: its compilation can take minutes; past its cap it is "timed out" and not run again.
    autotune = (s.big_model, b0, s.big_resolution, "bfloat16", big0) if s.autotune_model == s.big_model else (
        "cifar_resnet20", s.batch, 32, "float32", r20)  # fmt: skip
    model, batch, resolution, dtype, jax_item = autotune
    torch_item(model, batch, resolution, dtype, "max-autotune", jax_item, need=min(s.autotune_cap_s, s.need_s),
               cap=s.autotune_cap_s)  # fmt: skip
    return items


def packing_items(suite: Suite) -> list[Item]:
    s, items = suite.scale, []
    for model, counts in (("cifar_resnet20", s.seeds), ("cifar_resnet56", s.r56_seeds)):
        for k in counts:
            name = f"packing/vmap_{k}" if model == "cifar_resnet20" else f"packing/resnet56_vmap_{k}"
            run = functools.partial(vmap, suite, name, model, k)
            items.append(Item(name, "packing", run, s.need_s, s.cap_s))
    for mps in (False, True):  # MPS last
        for n in s.processes:
            name = f"packing/processes_{n}{'_mps' if mps else ''}"
            run = functools.partial(processes, suite, n, mps)
            items.append(Item(name, "packing", run, s.need_s + s.start_delay_s, s.cap_s))
    return items


def vmap(suite: Suite, name: str, model: str, k: int, cap: float) -> dict[str, Any]:
    """K seeds in one vmapped step (one seed of ResNet-20 is the speed part's bare step, where measured)."""
    if k == 1 and model == "cifar_resnet20" and suite.done("speed/cifar_resnet20"):
        r = dict(suite.result("speed/cifar_resnet20"), source="speed/cifar_resnet20")
    else:
        r = bench(suite, name, [sys.executable, "bench/throughput.py", *_resnet20(suite, model), "--seeds", str(k)],
                  cap)  # fmt: skip
    if r["status"] == "done":
        total = r["result"]["train_images_per_s"]  # all seeds together (bench/throughput.py)
        r["images_per_s"] = total
        r["figure"] = f"{total:,.0f} img/s in all ({total / k:,.0f} per seed)"
    return r


def processes(suite: Suite, n: int, mps: bool, cap: float) -> dict[str, Any]:
    """N concurrent bench/throughput.py processes timing the same seconds; their images/s summed."""
    name = f"packing/processes_{n}{'_mps' if mps else ''}"
    control = shutil.which("nvidia-cuda-mps-control")
    if mps and control is None:
        return {"status": "done", "skipped": True, "figure": "not run: no nvidia-cuda-mps-control on this machine"}
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / n:.3f}")
    start_at = time.time() + suite.scale.start_delay_s
    cmd = [sys.executable, "bench/throughput.py", *_resnet20(suite), "--start-at", f"{start_at:.0f}"]
    command = f"{n} x " + shlex.join(["XLA_PYTHON_CLIENT_MEM_FRACTION=" + env["XLA_PYTHON_CLIENT_MEM_FRACTION"],
                                      "python3", *cmd[1:]]) + (" under MPS" if mps else "")  # fmt: skip
    logs = [suite.log(f"{name}_{i}") for i in range(n)]
    if mps:
        subprocess.run([control, "-d"], check=True, timeout=30)
        suite.mps_control = control
    try:
        procs = []
        for log in logs:
            open(log, "w").close()
            procs.append(suite.spawn(cmd, log, env))
        how = suite.wait(procs, cap)
    finally:
        if mps:
            subprocess.run([control], input="quit\n", text=True, timeout=30)
            suite.mps_control = ""
    if how != "exited":
        return {"status": how, "error": f"{how} after {cap:.0f} s cap or the call's end", "command": command}
    codes = [p.returncode for p in procs]
    if any(codes):
        return {"status": "failed", "error": f"exit codes {codes}: {tail(logs[codes.index(max(codes))])}",
                "command": command}  # fmt: skip
    results = [last_json(tail(log, 100_000)) for log in logs]
    late = any(r["compile_s"] > suite.scale.start_delay_s for r in results)
    total = sum(r["train_images_per_s"] for r in results)
    return {
        "status": "done", "images_per_s": total, "per_process": [r["train_images_per_s"] for r in results],
        "late_start": late, "command": command,
        "figure": f"{total:,.0f} img/s in all ({total / n:,.0f} per run)" + (" (one started late)" if late else ""),
    }  # fmt: skip


# -- the study and its referee ----------------------------------------------------------------------


def load_plan(path: str, seeds: int | None, parallel: int | None) -> dict[str, Any]:
    """The study's pinned K and parallelism (`path`, committed): flags may write a plan that does not exist
    yet, not change one that does. {} where there is none."""
    plan = {}
    if os.path.isfile(path):
        with open(path) as f:
            plan = json.load(f)
    wanted = {k: v for k, v in (("seeds", seeds), ("parallel", parallel)) if v is not None}
    if plan:
        changed = {k: (plan.get(k), v) for k, v in wanted.items() if plan.get(k) != v}
        if changed:
            raise ValueError(f"{path} pins {', '.join(f'{k}={old}' for k, (old, _) in changed.items())}; "
                             f"--{' --'.join(f'{k} {new}' for k, (_, new) in changed.items())} would change the "
                             "study's runs (edit plan.json only before the study's first run starts)")  # fmt: skip
        return plan
    if len(wanted) == 2:
        plan = {"seeds": wanted["seeds"], "parallel": wanted["parallel"], "min_gain": 0.0,
                "written": time.strftime("%Y-%m-%d %H:%M:%S"), "by": "flags"}  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(plan, f, indent=1)
            f.write("\n")
    return plan


def started_seeds(workdir: str) -> dict[str, int]:
    """num_seeds of every run the study has started (its config.json)."""
    out = {}
    for path in glob.glob(os.path.join(workdir, "*", "config.json")):
        with open(path) as f:
            out[os.path.basename(os.path.dirname(path))] = int(json.load(f).get("num_seeds", 1))
    return out


def plan_blocker(suite: Suite, workdir: str) -> str:
    """Why the study may not start now ("" if it may): no plan, a plan that disagrees with the runs already
    started, or one whose K lost to K = 1 in the packing figures (plan.json's min_gain)."""
    k = suite.plan.get("seeds")
    if not k or not suite.plan.get("parallel"):
        return "no plan: commit bench/results/gpu/plan.json (or pass --seeds K --parallel N once)"
    other = {m: n for m, n in started_seeds(workdir).items() if n != k}
    if other:
        return f"plan.json has seeds={k}, but runs were started with {other}"
    one, packed = suite.result("packing/vmap_1"), suite.result(f"packing/vmap_{k}")
    gain = packed.get("images_per_s", 0) / one["images_per_s"] if one.get("images_per_s") else None
    if k > 1 and not started_seeds(workdir) and gain is not None and gain < suite.plan.get("min_gain", 0):
        return (f"K={k} vmapped gives {gain:.2f}x the images/s of one seed, under plan.json's min_gain "
                f"{suite.plan['min_gain']}: choose K again on the CPU side")  # fmt: skip
    return ""


def study_command(suite: Suite, workdir: str) -> list[str]:
    return [sys.executable, "-m", "resnet_jax.reproduce", "--study=cifar10", f"--workdir={workdir}",
            f"--seeds={suite.plan['seeds']}", f"--parallel={suite.plan['parallel']}",
            f"--only={','.join(suite.scale.study_models)}", f"--config.data.path={suite.data}",
            "--config.data.pipeline=device", *suite.scale.study_args]  # fmt: skip


def study_progress(workdir: str, models: tuple[str, ...]) -> dict[str, Any]:
    """Finished networks with their test errors (%), and each unfinished one's latest checkpoint step."""
    errors, at = {}, {}
    for model in models:
        run = os.path.join(workdir, model)
        if os.path.isfile(os.path.join(run, "result.json")):
            with open(os.path.join(run, "result.json")) as f:
                errors[model] = [round(100 * s["final_test_error"], 2) for s in json.load(f)["seeds"]]
        elif latest_step(run) is not None:
            at[model] = f"{latest_step(run):,} of {_total_steps(run):,}"
    return {"test_errors": errors, "pending": [m for m in models if m not in errors], "at_step": at}


def _total_steps(run: str) -> int:
    with open(os.path.join(run, "config.json")) as f:
        return int(json.load(f)["num_train_steps"])


def latest_step(run: str) -> int | None:
    """The newest complete checkpoint of a run (Orbax writes into a temporary name and renames)."""
    found = glob.glob(os.path.join(run, "checkpoints", "*", "_CHECKPOINT_METADATA"))
    steps = [int(os.path.basename(os.path.dirname(p))) for p in found if os.path.basename(os.path.dirname(p)).isdigit()]
    return max(steps) if steps else None


def study_result(suite: Suite, workdir: str, how: str, code: int | None, log: str, cmd: list[str],
                 seconds: float) -> dict[str, Any]:  # fmt: skip
    """The study item: done (every network finished), cut short (stopped by the call's end: it resumes), or
    failed (a crash, with its log's tail)."""
    progress = study_progress(workdir, suite.scale.study_models)
    done = how == "exited" and code == 0 and not progress["pending"]
    status = "done" if done else "cut short" if how == "cut short" or suite.signalled else "failed"
    figure = f"test error (%) {progress['test_errors']}"
    if progress["pending"]:
        figure += f"; pending {progress['pending']}"
    if progress["at_step"]:
        figure += f", at step {progress['at_step']}"
    r = {"status": status, "seeds": suite.plan["seeds"], "parallel": suite.plan["parallel"], **progress,
         "seconds_this_call": round(seconds, 1), "command": shown(cmd),
         "figure": f"{figure}; {seconds:,.0f} s this call"}  # fmt: skip
    if status == "failed":
        r["error"] = f"exit {code}" + (" past its cap" if how == "timed out" else "") + f": {tail(log)}"
    return r


def referee_paths(suite: Suite, model: str) -> tuple[str, str]:
    folder = os.path.join(suite.out, "referee")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{model}.pt"), os.path.join(folder, f"{model}.json")


def start_referee(suite: Suite) -> tuple[str, subprocess.Popen, list[str]] | None:
    """The first referee run not done (resuming from its checkpoint), in the background."""
    for model in suite.scale.referee_models:
        name = f"referee/{model}"
        if not suite.should_run(name):
            continue
        checkpoint, out = referee_paths(suite, model)
        depth = model.removeprefix("cifar_resnet")
        cmd = [sys.executable, "bench/torch_accuracy.py", "--data", suite.data,
               "--recipe", f"configs/cifar10_resnet{depth}.py", "--init", "he", *suite.scale.referee_args,
               "--checkpoint", checkpoint, "--out", out]  # fmt: skip
        return name, suite.spawn(cmd, suite.log(name)), cmd
    return None


def referee_result(suite: Suite, name: str, how: str, code: int | None, cmd: list[str]) -> dict[str, Any]:
    _, path = referee_paths(suite, name.split("/")[1])
    base = {"command": shown(cmd)}
    if how == "exited" and code == 0 and os.path.isfile(path):
        with open(path) as f:
            r = json.load(f)
        return {**base, "status": "done", "result": r,
                "figure": f"test top-1 {100 * r['test_top1']:.2f}% after {r['steps']:,} steps; {r['wall_s']:,.0f} s; "
                          f"{r['train_images_per_s']:,.0f} img/s (PyTorch {r['torch']})"}  # fmt: skip
    if how == "cut short" or suite.signalled:
        return {**base, "status": "cut short", "error": "stopped by the call's end (resumes from its checkpoint)"}
    return {**base, "status": "failed", "error": f"exit {code}: {tail(suite.log(name))}"}


def study_and_referee(suite: Suite, cap: float) -> None:
    """The study, with the referee beside it on the same GPU; both stopped at the call's end (the study
    saves a checkpoint), both resume in the next call or lease. Records its own results."""
    workdir = os.path.join(suite.out, "study")
    study = None
    if "study" in suite.parts and suite.should_run("study"):
        blocker = plan_blocker(suite, workdir)
        if blocker:
            suite.record("study", {"status": "waiting", "error": blocker})
        else:
            cmd = study_command(suite, workdir)
            env = dict(os.environ)
            if suite.plan["parallel"] == 1 and "referee" in suite.parts:
                env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # leave the referee its share
            log = suite.log("study")
            study = (suite.spawn(cmd, log, env), cmd, log, time.time())
    referee = start_referee(suite) if "referee" in suite.parts else None
    end = time.time() + cap
    finished = set(study_progress(workdir, suite.scale.study_models)["test_errors"])
    while study or referee:
        if suite.stopping() or time.time() >= end:
            how = "cut short" if suite.stopping() else "timed out"
            suite.stop([x[1] if x is referee else x[0] for x in (study, referee) if x], suite.scale.stop_grace_s)
        else:
            how = "exited"
        if study and study[0].poll() is not None:
            proc, cmd, log, t0 = study
            suite.record("study", study_result(suite, workdir, how, proc.returncode, log, cmd, time.time() - t0))
            study = None
        if referee and referee[1].poll() is not None:
            name, proc, cmd = referee
            suite.record(name, referee_result(suite, name, how, proc.returncode, cmd))
            referee = None
            if how == "exited" and suite.left() > suite.scale.need_s:
                referee = start_referee(suite)
        now_finished = set(study_progress(workdir, suite.scale.study_models)["test_errors"])
        if now_finished != finished:  # a network finished: its results out at once
            finished = now_finished
            build_carry(suite)
            suite.save()
            suite.export()
        time.sleep(0.5)


def study_items(suite: Suite) -> list[Item]:
    if not {"study", "referee"} & set(suite.parts):
        return []
    return [Item("study", "study", lambda cap: study_and_referee(suite, cap), suite.scale.study_need_s, 1e9)]


# -- the carry: what the next lease needs -----------------------------------------------------------


class _PartWriter(io.RawIOBase):
    """A file split into ``<base>.000``, ``.001``, ... of at most `size` bytes each."""

    def __init__(self, base: str, size: int):
        self.base, self.size, self.names, self.sha = base, size, [], hashlib.sha256()
        self._f, self._n = None, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = memoryview(data)
        written = 0
        while written < len(data):
            if self._f is None or self._n == self.size:
                if self._f:
                    self._f.close()
                self.names.append(f"{self.base}.{len(self.names):03d}")
                self._f, self._n = open(self.names[-1], "wb"), 0
            chunk = data[written : written + self.size - self._n]
            self._f.write(chunk)
            self.sha.update(chunk)
            self._n += len(chunk)
            written += len(chunk)
        return written

    def close(self) -> None:
        if self._f:
            self._f.close()
        super().close()


def carry_files(out: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """(small files, checkpoint files, the checkpoints' steps), relative to `out`: every run's config.json,
    metrics.jsonl (each seed's) and result.json and the study's own files; of an unfinished run its latest
    checkpoint only; the referee's results, or its checkpoint while unfinished."""
    small, big, steps = [], [], {}

    def rel(*p: str) -> str:
        return os.path.relpath(os.path.join(*p), out)

    study = os.path.join(out, "study")
    for f in ("study.json", "results.json", "table.md"):
        if os.path.isfile(os.path.join(study, f)):
            small.append(rel(study, f))
    for run in sorted(glob.glob(os.path.join(study, "*", "config.json"))):
        run = os.path.dirname(run)
        for f in ("config.json", "result.json", "metrics.jsonl"):
            if os.path.isfile(os.path.join(run, f)):
                small.append(rel(run, f))
        small += [rel(p) for p in sorted(glob.glob(os.path.join(run, "seed*", "metrics.jsonl")))]
        step = latest_step(run)
        if not os.path.isfile(os.path.join(run, "result.json")) and step is not None:
            steps[rel(run)] = step
            for d, _, files in os.walk(os.path.join(run, "checkpoints", str(step))):
                big += [rel(d, f) for f in sorted(files)]
    for f in sorted(glob.glob(os.path.join(out, "referee", "*.json"))):
        small.append(rel(f))
    for f in sorted(glob.glob(os.path.join(out, "referee", "*.pt"))):
        if not os.path.isfile(f[:-3] + ".json"):
            big.append(rel(f))
            steps[rel(f)] = "latest epoch"
    return small, big, steps


def build_carry(suite: Suite, part_bytes: int = PART_BYTES) -> dict[str, Any]:
    """``<out>/carry/study.tar.gz`` and ``<out>/carry/ckpt.tar.NNN``; their manifest goes into summary.json."""
    folder = os.path.join(suite.out, "carry")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    small, big, steps = carry_files(suite.out)
    with tarfile.open(os.path.join(folder, "study.tar.gz"), "w:gz", compresslevel=6) as tar:
        for f in small:
            tar.add(os.path.join(suite.out, f), f)
    parts, digest, size = [], "", 0
    if big:
        writer = _PartWriter(os.path.join(folder, "ckpt.tar"), part_bytes)
        with tarfile.open(fileobj=writer, mode="w|") as tar:
            for f in big:
                tar.add(os.path.join(suite.out, f), f)
        writer.close()
        parts, digest = [os.path.basename(n) for n in writer.names], writer.sha.hexdigest()
        size = sum(os.path.getsize(n) for n in writer.names)
    room = MAX_FILES - len(SMALL_EXPORTS)
    carry = {"small": "study.tar.gz", "small_files": len(small), "parts": parts, "bytes": size, "sha256": digest,
             "checkpoints": steps, "built": time.time()}  # fmt: skip
    if len(parts) > room:
        carry["error"] = (f"{size / 2**20:.1f} MiB of checkpoints: over the {room} parts that fit in $OUT beside "
                          "the summary; not exported (the unfinished runs restart in the next lease)")  # fmt: skip
    suite.state["carry"] = carry
    return carry


def _join_parts(names: list[str]) -> io.BufferedReader:
    class Joined(io.RawIOBase):
        def __init__(self) -> None:
            self.files = [open(n, "rb") for n in names]

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            while self.files:
                n = self.files[0].readinto(buf)
                if n:
                    return n
                self.files.pop(0).close()
            return 0

    return io.BufferedReader(Joined())


def _extract(tar: tarfile.TarFile, into: str) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
    else:  # pragma: no cover - Python before 3.11.4
        tar.extractall(into)


def _find_parts(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "ckpt.tar.[0-9][0-9][0-9]"))) or sorted(
        glob.glob(os.path.join(folder, "ckpt", "ckpt.tar.[0-9][0-9][0-9]"))
    )


def resume_from(suite: Suite, folder: str) -> str:
    """Starts a fresh `--out` from a carry (``$OUT`` as it came back, or ``--collect``'s folder): the summary,
    the study's small files, the checkpoints (checked against the manifest). A folder that already holds a
    study (the same machine, a later call) is left as it is. Returns what it did, for the summary."""
    if not os.path.isdir(folder):
        return f"{folder}: no such folder; nothing resumed"
    said = []
    summary = os.path.join(folder, "summary.json")
    carry: dict[str, Any] = {}
    if os.path.isfile(summary):
        with open(summary) as f:
            carry = json.load(f).get("carry", {})
        if not os.path.isfile(suite.path):
            shutil.copy(summary, suite.path)
            said.append("summary")
    if os.path.isdir(os.path.join(suite.out, "study")) or os.path.isdir(os.path.join(suite.out, "referee")):
        return ", ".join(said + ["the study's folder already here: kept"])
    if os.path.isfile(os.path.join(folder, "study.tar.gz")):
        with tarfile.open(os.path.join(folder, "study.tar.gz")) as tar:
            _extract(tar, suite.out)
        said.append("study.tar.gz")
    else:
        for sub in ("study", "referee"):
            if os.path.isdir(os.path.join(folder, sub)):
                shutil.copytree(os.path.join(folder, sub), os.path.join(suite.out, sub))
                said.append(f"{sub}/")
    parts = _find_parts(folder)
    if parts:
        sha = hashlib.sha256()
        for p in parts:
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    sha.update(block)
        names = [os.path.basename(p) for p in parts]
        if carry.get("parts") and (names != carry["parts"] or sha.hexdigest() != carry.get("sha256")):
            said.append(f"checkpoints {names} do not match the summary's manifest {carry['parts']}: not used")
        else:
            with tarfile.open(fileobj=_join_parts(parts), mode="r|") as tar:
                _extract(tar, suite.out)
            said.append(f"checkpoints ({len(parts)} part(s): {carry.get('checkpoints', {})})")
    elif carry.get("parts"):
        said.append(f"checkpoints {carry['parts']} missing")
    # A run with metrics but no checkpoint to resume from starts again from its first step, cleanly.
    for run in glob.glob(os.path.join(suite.out, "study", "*", "config.json")):
        run = os.path.dirname(run)
        if not os.path.isfile(os.path.join(run, "result.json")) and latest_step(run) is None:
            shutil.rmtree(run)
            said.append(f"{os.path.basename(run)} restarts (no checkpoint)")
    return ", ".join(said)


def export(out: str, directory: str, state: dict[str, Any]) -> None:
    """Copies the summary, the study's table and figure and the carry into `directory` (at most 8 files,
    each written under a temporary name, then renamed); drops carry parts of an earlier export."""
    os.makedirs(directory, exist_ok=True)
    carry = state.get("carry", {})
    files = [os.path.join(out, f) for f in ("summary.json", "summary.md")]
    files += [os.path.join(out, "study", f) for f in ("table.md", "figure.png")]
    if carry.get("small_files"):
        files.append(os.path.join(out, "carry", "study.tar.gz"))
    if not carry.get("error"):
        files += [os.path.join(out, "carry", p) for p in carry.get("parts", [])]
    files = [f for f in files if os.path.isfile(f)][:MAX_FILES]
    names = {os.path.basename(f) for f in files}
    for old in glob.glob(os.path.join(directory, "ckpt.tar.*")):
        if os.path.basename(old) not in names:
            os.remove(old)
    for f in files:
        target = os.path.join(directory, os.path.basename(f))
        if (
            os.path.isfile(target)
            and os.path.getsize(target) == os.path.getsize(f)
            and os.path.getmtime(target) >= os.path.getmtime(f)
        ):
            continue  # copied already (the carry's parts are rebuilt only when the study moved)
        shutil.copyfile(f, target + ".tmp")
        os.replace(target + ".tmp", target)


def collect(source: str, into: str = RESULTS) -> list[str]:
    """On the CPU side, after a lease: the files back from $OUT into `into` (the summary, table and figure;
    study.tar.gz unpacked, to be committed; checkpoint parts into ``<into>/ckpt/``, git-ignored, to be
    carried to the next lease). Returns what it wrote."""
    os.makedirs(into, exist_ok=True)
    wrote = []
    for f in ("summary.json", "summary.md", "table.md", "figure.png"):
        if os.path.isfile(os.path.join(source, f)):
            shutil.copyfile(os.path.join(source, f), os.path.join(into, f))
            wrote.append(f)
    if os.path.isfile(os.path.join(source, "study.tar.gz")):
        for sub in ("study", "referee"):
            shutil.rmtree(os.path.join(into, sub), ignore_errors=True)
        with tarfile.open(os.path.join(source, "study.tar.gz")) as tar:
            _extract(tar, into)
        wrote.append("study/, referee/")
    parts = _find_parts(source)
    ckpt = os.path.join(into, "ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    if parts:
        os.makedirs(ckpt)
        for p in parts:
            shutil.copyfile(p, os.path.join(ckpt, os.path.basename(p)))
        wrote.append(f"ckpt/ ({len(parts)} part(s))")
    return wrote


# -- the data ---------------------------------------------------------------------------------------


def prepare_data(data: str, archive: str) -> str:
    """Extracts `archive` (a .tar.gz holding the folder `data` names) once per machine: skipped where
    ``<data>.extracted`` says it is complete."""
    marker = os.path.normpath(data) + ".extracted"
    if os.path.isfile(marker) and os.path.isdir(data):
        return "present"
    if not archive:
        return "given" if os.path.isdir(data) else f"missing: {data}"
    t0 = time.time()
    parent = os.path.dirname(os.path.normpath(data))
    os.makedirs(parent, exist_ok=True)
    subprocess.run(["tar", "xzf", archive, "-C", parent], check=True)
    if not os.path.isdir(data):
        raise FileNotFoundError(f"{archive} holds no {os.path.basename(data)}/")
    open(marker, "w").close()
    return f"extracted in {time.time() - t0:.1f} s"


# -- the report -------------------------------------------------------------------------------------


def markdown(state: dict[str, Any]) -> str:
    """A markdown row per item: what, status, figure, seconds, command (shell-quoted)."""
    lines = ["| item | status | figure | s | command |", "|---|---|---|---|---|"]
    for name, r in state["items"].items():
        figure = r.get("figure", r.get("error", "")).replace("|", "/").replace("\n", " ")[:600]
        seconds = r.get("seconds", "")
        lines.append(f"| {name} | {r.get('status')} | {figure} | {seconds} | `{r.get('command', '')}` |")
    return "\n".join(lines) + "\n"


def all_items(suite: Suite) -> list[Item]:
    """Every item of the selected parts, in order of value."""
    items = []
    if "speed" in suite.parts:
        items += speed_items(suite)
    if "packing" in suite.parts:
        items += packing_items(suite)
    return items + study_items(suite)


def run_items(suite: Suite, items: list[Item]) -> None:
    for item in items:
        if suite.stopping():
            break
        if item.name != "study" and not suite.should_run(item.name):
            continue
        cut_before = suite.result(item.name).get("status") == "cut short"
        need = item.cap_s if cut_before and item.cap_s < 1e8 else item.need_s  # cut short once: wait for room
        if suite.left() < need:
            suite.call.setdefault("not_started", []).append(item.name)
            continue
        t0 = time.time()
        try:
            result = item.run(min(item.cap_s, suite.left()) if item.cap_s < 1e8 else item.cap_s)
        except Exception as e:  # a bug or a broken machine: this item fails, the next one still runs
            result = {"status": "failed", "error": f"{type(e).__name__} in the suite: {e}"}
        if result is not None:
            result["seconds"] = round(time.time() - t0, 1)
            suite.record(item.name, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the CIFAR-10 image folder root/{train,test}/<class>/")
    p.add_argument("--data-tar", default="", help="a .tar.gz holding that folder: extracted once per machine")
    p.add_argument("--out", help="the suite's folder (results, logs, the study's runs)")
    p.add_argument("--started-at", type=float, default=0.0, help="Unix time the command started (default: now)")
    p.add_argument("--deadline-s", type=float, default=555.0, help="seconds from --started-at this call may take")
    p.add_argument(
        "--reserve-s",
        type=float,
        default=0.0,
        help="seconds before the deadline at which running items are stopped (default: 45, tiny 35)",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--export", default="", help="the device tool's $OUT: the summary and the carry, after each item")
    p.add_argument("--resume-from", default="", help="a carry (the files back from $OUT, or --collect's folder)")
    p.add_argument("--plan", default=os.path.join(RESULTS, "plan.json"), help="the study's pinned K and parallelism")
    p.add_argument("--seeds", type=int, help="K, seeds per network trained together (written to a new --plan)")
    p.add_argument("--parallel", type=int, help="networks trained at once (written to a new --plan)")
    p.add_argument(
        "--retry",
        action="append",
        default=[],
        metavar="NAME",
        help="run again an item that failed or timed out (an item, a part, 'failed', 'timed out', all)",
    )
    p.add_argument("--tiny", action="store_true", help="a few steps of every item (a CPU check of the suite)")
    p.add_argument("--collect", metavar="DIR", help="CPU side: file the files back from $OUT under --into")
    p.add_argument("--into", default=RESULTS, help="where --collect files them (default bench/results/gpu)")
    args = p.parse_args(argv)
    if args.collect:
        print(f"{args.into}: {', '.join(collect(args.collect, args.into))}")
        return 0
    if not args.data or not args.out:
        p.error("--data and --out are needed (or --collect)")
    parts = [x for x in args.parts.split(",") if x]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
    scale = TINY if args.tiny else Scale()
    try:
        plan = load_plan(args.plan, args.seeds, args.parallel)
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    suite = Suite(os.path.abspath(args.out), os.path.abspath(args.data), scale, args.started_at or time.time(),
                  args.deadline_s, args.reserve_s or (35.0 if args.tiny else 45.0), parts,
                  os.path.abspath(args.export) if args.export else "", tuple(args.retry), plan)  # fmt: skip

    def on_signal(signum: int, frame: Any) -> None:
        suite.signalled = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    become_subreaper()
    resumed = resume_from(suite, args.resume_from) if args.resume_from else ""
    suite.load()
    suite.call.update(resumed=resumed, plan=plan)
    try:
        suite.call["data"] = prepare_data(suite.data, args.data_tar)
        suite.call["setup_s"] = round(time.time() - suite.started_at, 1)
        build_carry(suite)
        suite.save()
        suite.export()
        run_items(suite, all_items(suite))
    finally:
        suite.call["stopped_by"] = suite.signalled or ("deadline" if time.time() >= suite.stop_at else "done")
        suite.save()
        suite.export()  # the figures out first: the tool may not wait long after its SIGTERM
        suite.shutdown()
        build_carry(suite)
        suite.save()
        suite.export()
    names = [i.name for i in all_items(suite) if i.name != "study"]
    names += ["study"] * ("study" in parts) + [f"referee/{m}" for m in scale.referee_models] * ("referee" in parts)
    todo = [n for n in names if suite.should_run(n)]
    print(f"summary: {suite.path}; stopped by {suite.call['stopped_by']} after {suite.call['seconds']:.0f} s; "
          f"not done yet (the same command again): {', '.join(todo) or 'none'}")  # fmt: skip
    return 3 if suite.signalled else 0


if __name__ == "__main__":
    sys.exit(main())
