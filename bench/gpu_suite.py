"""Every GPU figure the open issues ask for, from one command: each part under
its own time budget, resumable across calls of a lent GPU machine.

    python bench/gpu_suite.py --data /tmp/d/cifar10-jpeg --out runs/gpu --budget-s 540 --export $OUT
    python bench/gpu_suite.py --tiny --data <small image folder> --out /tmp/suite   # a few steps of every part, CPU

Parts, in order of value (``--parts`` picks some):

1. ``packing``: aggregate training images/s of many small runs on
   ``cifar_resnet20`` (batch 128, float32): 1 run; K = 2, 4, 8, 16 seeds
   vmapped in one step; N = 2, 4, 8 concurrent processes, without and with the
   CUDA MPS daemon (all processes time the same seconds: ``--start-at``).
2. ``study``: the paper's CIFAR-10 study at scale 1 (``python -m
   resnet_jax.reproduce``) with the fastest packing measured in part 1, as far
   as the budget goes; it saves on SIGTERM and resumes on the next call.
3. ``referee``: PyTorch trains ResNet-20 (then ResNet-56) with the paper's
   recipe on the same folder (bench/torch_accuracy.py), sharing the GPU with
   part 2; it checkpoints every epoch and resumes.
4. ``speed``: throughput against PyTorch eager and ``torch.compile``
   (default, reduce-overhead, max-autotune), channels-last: ResNet-50 at 224,
   bfloat16, batch 256 and 512, two-pass and one-pass batch norm; ResNet-20,
   batch 128, float32, the bare step and the step fed by the on-device pipeline.

Each item runs as its own process with a time limit; a finished item is
skipped by the next call. Each part has a budget of seconds over all calls
(``--part-budget study=1200``; defaults in `PART_BUDGET_S`), so that a long
study leaves time for the speed figures of the same session. ``<out>/summary.json`` holds every result and
``<out>/summary.md`` a markdown row per figure (for docs/gpu.md), rewritten
after each item; ``--export DIR`` copies them and the study's report (at most
8 files, for the device tool's $OUT). ``--tiny`` shrinks every item to a few
steps on small images, so that tests/test_gpu_suite.py runs the whole suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("packing", "study", "referee", "speed")
# Seconds each part may take over all calls: about 25 usable minutes of a lent GPU.
PART_BUDGET_S = {"packing": 480.0, "study": 960.0, "speed": 480.0}  # the referee runs beside the study


@dataclass(frozen=True)
class Scale:
    """The sizes of the suite's items: full (a GPU) or tiny (a CPU test)."""

    steps: int = 200
    batch: int = 128
    seeds: tuple[int, ...] = (1, 2, 4, 8, 16)
    processes: tuple[int, ...] = (2, 4, 8)
    big_model: str = "resnet50"
    big_batches: tuple[int, ...] = (256, 512)
    big_resolution: int = 224
    bn_one_pass: tuple[bool, ...] = (False, True)
    torch_modes: tuple[str, ...] = ("eager", "default", "reduce-overhead", "max-autotune")
    big_torch_modes: tuple[str, ...] = ("eager", "default", "reduce-overhead", "max-autotune")
    referee_models: tuple[str, ...] = ("cifar_resnet20", "cifar_resnet56")
    start_delay_s: float = 40.0  # compile time allowed before concurrent processes start timing
    study_args: tuple[str, ...] = ()
    referee_args: tuple[str, ...] = ("--device", "cuda")
    throughput_args: tuple[str, ...] = ()


TINY = Scale(
    steps=1, batch=16, seeds=(1, 2), processes=(2,), big_model="cifar_resnet20", big_batches=(16,),
    big_resolution=32, bn_one_pass=(True,), torch_modes=("eager",), big_torch_modes=(),
    referee_models=("cifar_resnet20",), start_delay_s=45.0,
    study_args=("--scale=0.0002", "--evals=1", "--only=cifar_resnet20", "--config.data.image_size=16",
                "--config.batch_size=16", "--config.eval_batch_size=16"),
    referee_args=("--device", "cpu", "--scale", "0.0002", "--batch-size", "16"),
)  # fmt: skip


@dataclass
class Suite:
    """The state of a suite's output folder: results so far, the budget's clock."""

    out: str
    data: str
    scale: Scale
    deadline: float
    parts: list[str]
    budgets: dict[str, float] = field(default_factory=lambda: dict(PART_BUDGET_S))
    state: dict[str, Any] = field(default_factory=dict)
    part: str = ""  # the part running now
    part_started: float = 0.0

    @property
    def path(self) -> str:
        return os.path.join(self.out, "summary.json")

    def begin(self, part: str) -> None:
        """Starts the clock of `part`'s budget."""
        self.part, self.part_started = part, time.time()

    def end(self) -> None:
        """Adds the running part's seconds to what it has spent over all calls."""
        spent = self.state.setdefault("spent_s", {})
        spent[self.part] = spent.get(self.part, 0.0) + time.time() - self.part_started
        self.part_started = time.time()
        self.save()

    def left(self) -> float:
        """Seconds left to the running part: this call's and the part's budget, whichever ends first."""
        spent = self.state.get("spent_s", {}).get(self.part, 0.0) + time.time() - self.part_started
        return min(self.deadline - time.time(), self.budgets.get(self.part, float("inf")) - spent)

    def load(self) -> None:
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
        self.state.setdefault("items", {})
        self.state.setdefault("calls", []).append({"started": time.time()})

    def save(self) -> None:
        self.state["calls"][-1]["seconds"] = time.time() - self.state["calls"][-1]["started"]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.path)
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(markdown(self.state))

    def done(self, name: str) -> bool:
        return self.state["items"].get(name, {}).get("status") == "done"

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.state["items"][name] = result
        self.save()
        print(f"[{name}] {result.get('status')}: {result.get('figure', result.get('error', ''))}", flush=True)


def run_process(cmd: list[str], seconds: float, log: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs `cmd` for at most `seconds` (then SIGTERM, and SIGKILL 60 s later);
    returns its exit status and output, which also go to `log`."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with open(log) as f:
        return proc.returncode, f.read()


def shown(cmd: list[str]) -> str:
    """A command as a person would type it (``python`` for this interpreter)."""
    return " ".join(["python", *cmd[1:]])


def last_json(text: str) -> dict[str, Any]:
    """The last JSON object a benchmark printed (bench/throughput.py prints one)."""
    start = text.rfind("\n{") + 1  # 0 when the output starts with it
    return json.loads(text[start : text.index("\n}", start) + 2])


def throughput(suite: Suite, name: str, args: list[str], seconds: float = 480.0) -> dict[str, Any]:
    """One bench/throughput.py run as an item's result."""
    cmd = [sys.executable, "bench/throughput.py", *args, *suite.scale.throughput_args]
    code, out = run_process(cmd, min(seconds, suite.left()), _log(suite, name))
    if code != 0:
        return {"status": "failed", "error": f"exit {code}: {out[-400:]}", "command": shown(cmd)}
    return {"status": "done", "result": last_json(out), "command": shown(cmd)}


def _log(suite: Suite, name: str) -> str:
    os.makedirs(os.path.join(suite.out, "logs"), exist_ok=True)
    return os.path.join(suite.out, "logs", name.replace("/", "_") + ".log")


def _resnet20(suite: Suite) -> list[str]:
    return ["--model", "cifar_resnet20", "--batch", str(suite.scale.batch), "--steps", str(suite.scale.steps)]


def packing_items(suite: Suite) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    items = []
    for k in suite.scale.seeds:
        items.append((f"packing/vmap_{k}", lambda k=k: _figure_packing(throughput(
            suite, f"packing/vmap_{k}", [*_resnet20(suite), "--seeds", str(k)]), k, 1)))  # fmt: skip
    for n in suite.scale.processes:
        for mps in (False, True):
            name = f"packing/processes_{n}{'_mps' if mps else ''}"
            items.append((name, lambda n=n, mps=mps: processes(suite, n, mps)))
    return items


def _figure_packing(result: dict[str, Any], seeds: int, processes: int) -> dict[str, Any]:
    if result["status"] == "done":
        total = result["result"]["train_images_per_s"]
        result["images_per_s"] = total
        result["figure"] = f"{total:,.0f} img/s in all ({total / seeds / processes:,.0f} per run)"
    return result


def processes(suite: Suite, n: int, mps: bool) -> dict[str, Any]:
    """N concurrent bench/throughput.py processes timing the same seconds; their images/s summed."""
    name = f"packing/processes_{n}{'_mps' if mps else ''}"
    control = shutil.which("nvidia-cuda-mps-control")
    if mps and control is None:
        return {"status": "done", "skipped": True, "figure": "not run: no nvidia-cuda-mps-control on this machine"}
    if mps:
        subprocess.run([control, "-d"], check=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / n:.3f}")
    start_at = time.time() + suite.scale.start_delay_s
    cmd = [sys.executable, "bench/throughput.py", *_resnet20(suite), "--start-at", str(start_at)]
    logs = [_log(suite, f"{name}_{i}") for i in range(n)]
    try:
        procs = [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                 for log in logs]  # fmt: skip
        deadline = time.time() + min(600.0, suite.left())
        codes = [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return {"status": "failed", "error": "timed out", "command": shown(cmd)}
    finally:
        if mps:
            subprocess.run([control], input="quit\n", text=True)
    if any(codes):
        return {"status": "failed", "error": f"exit codes {codes}; see {logs}", "command": shown(cmd)}
    results = []
    for log in logs:
        with open(log) as f:
            results.append(last_json(f.read()))
    late = any(r["compile_s"] > suite.scale.start_delay_s for r in results)
    total = sum(r["train_images_per_s"] for r in results)
    return {
        "status": "done", "images_per_s": total, "per_process": [r["train_images_per_s"] for r in results],
        "late_start": late, "command": f"{n} x " + shown(cmd[:-2]) + (" under MPS" if mps else ""),
        "figure": f"{total:,.0f} img/s in all ({total / n:,.0f} per run)" + (" (one started late)" if late else ""),
    }  # fmt: skip


def fastest_packing(suite: Suite) -> tuple[int, int]:
    """(seeds per step, processes) of the best aggregate images/s measured in
    part 1 without MPS (the study does not start the daemon); kept once the
    study has started (a study's seeds cannot change)."""
    if "study_packing" in suite.state:
        return tuple(suite.state["study_packing"])
    best, choice = 0.0, (1, 1)
    for name, r in suite.state["items"].items():
        if name.startswith("packing/") and not name.endswith("_mps") and r.get("images_per_s", 0) > best:
            best = r["images_per_s"]
            count = int(name.split("_")[1])
            choice = (count, 1) if "vmap" in name else (1, count)
    suite.state["study_packing"] = list(choice)
    return choice


def study_and_referee(suite: Suite) -> list[tuple[str, dict[str, Any]]]:
    """Part 2, with part 3 running beside it on the same GPU."""
    seeds, parallel = fastest_packing(suite)
    referee = _start_referees(suite) if "referee" in suite.parts else []
    workdir = os.path.join(suite.out, "study")
    cmd = [sys.executable, "-m", "resnet_jax.reproduce", "--study=cifar10", f"--workdir={workdir}",
           f"--seeds={seeds}", f"--parallel={parallel}", f"--config.data.path={suite.data}",
           "--config.data.pipeline=device", *suite.scale.study_args]  # fmt: skip
    out = []
    if "study" in suite.parts and not suite.done("study"):
        code, log = run_process(cmd, suite.left() - 30, _log(suite, "study"))
        out.append(("study", _study_result(workdir, code, log, cmd, seeds, parallel)))
    for name, proc, cmd_r in referee:
        try:
            proc.wait(timeout=max(1.0, suite.left()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.append((name, _referee_result(suite, name, proc.returncode, cmd_r)))
    return out


def _study_result(workdir: str, code: int, log: str, cmd: list[str], seeds: int, parallel: int) -> dict[str, Any]:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return {"status": "partial", "error": f"exit {code}, no results yet: {log[-400:]}"}
    with open(path) as f:
        results = json.load(f)
    done = code == 0 and not results["pending"]
    errors = {}
    for r in results["runs"]:
        errors.setdefault(r["model"], []).append(round(100 * r["final_test_error"], 2))
    seconds = sum(s["seconds"] for s in results["sittings"])
    return {
        "status": "done" if done else "partial", "seeds": seeds, "parallel": parallel, "test_errors": errors,
        "pending": results["pending"], "seconds": seconds, "command": shown(cmd),
        "figure": f"test error (%) {errors}; {seconds:,.0f} s" + ("" if done else f"; pending {results['pending']}"),
    }  # fmt: skip


def _start_referees(suite: Suite) -> list[tuple[str, subprocess.Popen, list[str]]]:
    """The first unfinished referee run, in the background, resuming from its
    checkpoint (the next model starts on a later call)."""
    for model in suite.scale.referee_models:
        name = f"referee/{model}"
        if suite.done(name):
            continue
        depth = model.removeprefix("cifar_resnet")
        cmd = [sys.executable, "bench/torch_accuracy.py", "--data", suite.data,
               "--recipe", f"configs/cifar10_resnet{depth}.py", "--init", "he", *suite.scale.referee_args,
               "--checkpoint", os.path.join(suite.out, f"referee_{model}.pt"),
               "--out", os.path.join(suite.out, f"referee_{model}.json")]  # fmt: skip
        log = open(_log(suite, name), "a")
        return [(name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), cmd)]
    return []


def _referee_result(suite: Suite, name: str, code: int, cmd: list[str]) -> dict[str, Any]:
    path = os.path.join(suite.out, f"referee_{name.split('/')[1]}.json")
    if code != 0 or not os.path.isfile(path):
        error = f"exit {code} (resumes from its checkpoint)"
        return {"status": "partial", "error": error, "command": shown(cmd)}
    with open(path) as f:
        r = json.load(f)
    return {
        "status": "done", "result": r, "command": shown(cmd),
        "figure": f"test top-1 {100 * r['test_top1']:.2f}% after {r['steps']:,} steps; {r['wall_s']:,.0f} s; "
                  f"{r['train_images_per_s']:,.0f} img/s (PyTorch {r['torch']})",
    }  # fmt: skip


def speed_items(suite: Suite) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    s = suite.scale
    items = []
    big = ["--model", s.big_model, "--resolution", str(s.big_resolution), "--dtype", "bfloat16",
           "--steps", str(s.steps)]  # fmt: skip
    for batch in s.big_batches:
        for one_pass in s.bn_one_pass:
            name = f"speed/{s.big_model}_b{batch}{'_one_pass' if one_pass else ''}"
            args = [*big, "--batch", str(batch), "--model-kwargs", json.dumps({"bn_one_pass": one_pass})]
            items.append((name, lambda name=name, args=args: _figure_speed(throughput(suite, name, args))))
    for mode in s.big_torch_modes:
        name = f"speed/{s.big_model}_b{s.big_batches[0]}_vs_torch_{mode}"
        args = [*big, "--batch", str(s.big_batches[0]), "--torch", "--torch-modes", mode]
        items.append((name, lambda name=name, args=args: _figure_speed(throughput(suite, name, args))))
    name = "speed/cifar_resnet20_pipeline"
    args = [*_resnet20(suite), "--data", suite.data, "--pipeline", "device"]
    items.append((name, lambda name=name, args=args: _figure_speed(throughput(suite, name, args))))
    for mode in s.torch_modes:
        name = f"speed/cifar_resnet20_vs_torch_{mode}"
        args = [*_resnet20(suite), "--torch", "--torch-modes", mode]
        items.append((name, lambda name=name, args=args: _figure_speed(throughput(suite, name, args))))
    return items


def _figure_speed(result: dict[str, Any]) -> dict[str, Any]:
    if result["status"] != "done":
        return result
    r = result["result"]
    parts = [f"JAX {r['train_images_per_s']:,.0f} img/s"]
    if "pipeline_train_images_per_s" in r:
        parts.append(f"fed by the on-device pipeline {r['pipeline_train_images_per_s']:,.0f}")
    for key, value in r.items():
        if key.startswith("torch") and key.endswith("_train_images_per_s"):
            mode = key.removeprefix("torch").removesuffix("_train_images_per_s").strip("_") or "eager"
            ratio = r["ratio_jax_over_" + key.removesuffix("_train_images_per_s")]
            parts.append(f"PyTorch {mode} {value:,.0f} (ratio {ratio:.2f})")
    if r.get("mfu"):
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    result["figure"] = "; ".join(parts) + f"; {r['device']}"
    return result


def markdown(state: dict[str, Any]) -> str:
    """A markdown row per item: what, figure, command."""
    lines = ["| item | status | figure | command |", "|---|---|---|---|"]
    for name, r in state["items"].items():
        figure = r.get("figure", r.get("error", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {r.get('status')} | {figure} | `{r.get('command', '')}` |")
    return "\n".join(lines) + "\n"


def export(suite: Suite, directory: str) -> None:
    """Copies the summary and the study's report into `directory` (at most 8 files)."""
    os.makedirs(directory, exist_ok=True)
    files = [os.path.join(suite.out, f) for f in ("summary.json", "summary.md")]
    files += [os.path.join(suite.out, "study", f) for f in ("results.json", "table.md", "figure.png", "figure7.png")]
    for f in files:
        if os.path.isfile(f):
            shutil.copy(f, os.path.join(directory, os.path.basename(f).replace("results", "study_results")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 image folder root/{train,test}/<class>/")
    p.add_argument("--out", required=True, help="the suite's folder (results, logs, the study's runs)")
    p.add_argument("--budget-s", type=float, default=540.0, help="seconds this call may take")
    p.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--export", default="", help="copy the summary and the study's report into this folder")
    p.add_argument("--part-budget", action="append", default=[], metavar="PART=SECONDS",
                   help=f"seconds a part may take over all calls (default {PART_BUDGET_S})")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="a few steps of every item (a CPU check of the suite)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    parts = [x for x in args.parts.split(",") if x]
    suite = Suite(os.path.abspath(args.out), os.path.abspath(args.data), TINY if args.tiny else Scale(),
                  time.time() + args.budget_s, parts)  # fmt: skip
    unknown = set(suite.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
    for budget in args.part_budget:
        part, _, seconds = budget.partition("=")
        if part not in PART_BUDGET_S:
            p.error(f"--part-budget {budget!r}: parts with a budget are {', '.join(PART_BUDGET_S)}")
        suite.budgets[part] = float(seconds)
    suite.load()
    items = packing_items(suite) if "packing" in parts else []
    speed = speed_items(suite) if "speed" in parts else []
    suite.begin("packing")
    for name, run in items:
        if not suite.done(name) and suite.left() > 60:
            suite.record(name, run())
    suite.end()
    suite.begin("study")
    if {"study", "referee"} & set(suite.parts) and suite.left() > 60:
        for name, result in study_and_referee(suite):
            suite.record(name, result)
    suite.end()
    suite.begin("speed")
    for name, run in speed:
        if not suite.done(name) and suite.left() > 60:
            suite.record(name, run())
    suite.end()
    if args.export:
        export(suite, args.export)
    planned = [n for n, _ in items + speed] + ["study"] * ("study" in parts)
    planned += [f"referee/{m}" for m in suite.scale.referee_models] * ("referee" in parts)
    todo = [n for n in planned if not suite.done(n)]
    print(f"summary: {suite.path}; not done yet (run the same command again): {', '.join(todo) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
