"""The GPU benchmark: the project's headline figures on one GPU, the most valuable first.

    python bench/gpu.py --data <cifar10 folder> --out runs/gpu
    python bench/gpu.py --data <cifar10 folder> --out runs/gpu --deadline-s 540 --items resnet20,resnet50
    python bench/gpu.py --data <small folder> --out /tmp/gpu --tiny    # every item a few steps, on a CPU

Items, in this order (``--items`` picks some by prefix):

1. ``resnet20_*``: ``cifar_resnet20``, batch 128, float32: the bare compiled step, the step fed by the
   on-device pipeline, the step inside ``train.py``'s loop (the median images/s of its log), and PyTorch
   eager on the same settings.
2. ``resnet50_*``: ResNet-50 at 224, bfloat16, batch 256, two- and one-pass batch norm, against PyTorch
   channels-last with bf16 autocast, eager and ``torch.compile``.
3. ``population_*``: 1, 4 and 16 ResNet-20 members vmapped in one step, images/s of all members together.
4. ``study``: the paper's ``cifar_resnet20`` and ``cifar_plain20`` at full scale
   (``python -m resnet_jax.reproduce``, the device pipeline), for as long as the time goes.

Every item is a process of its own. Its result is appended to ``<out>/results.jsonl`` the moment it is
measured and ``<out>/summary.md`` (a row per item) is written again, each file whole (a temporary file renamed
over it), so a run stopped by SIGTERM, Ctrl-C or ``--deadline-s`` keeps every figure it measured; the running
item is stopped with SIGTERM (the study saves its checkpoint) and the benchmark ends with one line on stderr
and status 3 (130 for Ctrl-C). A file of ``<out>`` that cannot be written is one line (status 2), the earlier
results as they were. The same command again skips the items already measured and resumes the study from
``<out>/study``.
"""

from __future__ import annotations

if __name__ == "__main__":  # first: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/gpu.py")

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bench  # noqa: E402
from resnet_jax import errors  # noqa: E402

STOPPED = errors.EXIT_PREEMPTED  # the exit status of a benchmark stopped by SIGTERM or its deadline (Ctrl-C: 130)


@dataclass(frozen=True)
class Sizes:
    """How large each item is: the real benchmark, or `--tiny`'s rehearsal on a CPU."""

    steps: int = 200
    batch: int = 128
    big_model: str = "resnet50"
    big_resolution: int = 224
    big_batch: int = 256
    members: tuple[int, ...] = (1, 4, 16)
    loop_steps: int = 1000
    loop_log_every: int = 100
    torch_device: str = "cuda"
    compile_modes: tuple[str, ...] = ("default",)
    study_args: tuple[str, ...] = ()
    item_cap_s: float = 420.0
    jax_model_kwargs: str = ""  # throughput.py's --model-kwargs for every JAX item, as JSON


TINY = Sizes(
    steps=1, batch=16, big_model="cifar_resnet20", big_resolution=32, big_batch=16, members=(1, 2), loop_steps=12,
    loop_log_every=4, torch_device="cpu", compile_modes=(),
    study_args=("--scale=0.004", "--evals=2", "--config.data.image_size=16", "--config.batch_size=16",
                "--config.eval_batch_size=16", "--config.log_every_steps=4"),
    jax_model_kwargs='{"stage_sizes": [1, 1, 1], "stage_widths": [4, 8, 16]}',  # compiles in a third of the time
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One figure: a command, and how its output becomes a result."""

    name: str
    command: list[str]
    read: Callable[[str], dict[str, Any]]
    fresh: str = ""  # a folder removed before the item runs (a partial run of it must not be resumed)


def last_json(output: str) -> dict[str, Any]:
    """The last JSON object a benchmark process printed (bench/throughput.py, bench/torch_speed.py)."""
    start = output.rfind("\n{")
    start = 0 if start < 0 and output.startswith("{") else start
    if start < 0:
        raise ValueError("no JSON object in the output")
    return json.loads(output[start:])


def loop_result(workdir: str) -> Callable[[str], dict[str, Any]]:
    """The median images/s of a train.py run's log windows, the first (its compilation) left out."""

    def read(output: str) -> dict[str, Any]:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        rates = [r["images_per_sec"] for r in records if r.get("split") == "train"][1:]
        if not rates:
            raise ValueError("the run logged no training window after its first")
        return {"train_images_per_s": statistics.median(rates), "windows": len(rates)}

    return read


def study_result(workdir: str, models: tuple[str, ...]) -> Callable[[str], dict[str, Any]]:
    """Each finished network's test error (%), and the latest checkpoint step of each unfinished one."""

    def read(output: str) -> dict[str, Any]:
        errors, at = {}, {}
        for model in models:
            run = os.path.join(workdir, model)
            if os.path.isfile(os.path.join(run, "result.json")):
                with open(os.path.join(run, "result.json")) as f:
                    errors[model] = [round(100 * s["final_test_error"], 2) for s in json.load(f)["seeds"]]
            elif os.path.isdir(os.path.join(run, "checkpoints")):
                done = [int(n) for n in os.listdir(os.path.join(run, "checkpoints")) if n.isdigit()]
                at[model] = max(done, default=0)
        return {"test_error_percent": errors, "at_step": at, "finished": len(errors) == len(models)}

    return read


def items(sizes: Sizes, data: str, out: str) -> list[Item]:
    """Every item, in the order of value."""
    py, s = sys.executable, sizes
    throughput = [py, os.path.join(ROOT, "bench", "throughput.py"), "--steps", str(s.steps)]
    if s.jax_model_kwargs:
        throughput += ["--model-kwargs", s.jax_model_kwargs]
    torch = [py, os.path.join(ROOT, "bench", "torch_speed.py"), "--steps", str(s.steps), "--device", s.torch_device]
    r20 = ["--model", "cifar_resnet20", "--batch", str(s.batch)]
    big = ["--model", s.big_model, "--resolution", str(s.big_resolution), "--dtype", "bfloat16",
           "--batch", str(s.big_batch)]  # fmt: skip
    loop_dir = os.path.join(out, "loop")
    study_dir, study_models = os.path.join(out, "study"), ("cifar_resnet20", "cifar_plain20")
    found = [
        Item("resnet20_jax", [*throughput, *r20, "--data", data, "--pipeline", "device"], last_json),
        Item("resnet20_loop", [py, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs",
             "cifar10_resnet20.py"), "--workdir", loop_dir, f"--config.data.path={data}",
             "--config.data.pipeline=device", f"--config.num_train_steps={s.loop_steps}",
             f"--config.log_every_steps={s.loop_log_every}", f"--config.eval_every_steps={s.loop_steps}",
             f"--config.batch_size={s.batch}", f"--config.eval_batch_size={s.batch}"],
             loop_result(loop_dir), fresh=loop_dir),  # fmt: skip
        Item("resnet20_torch_eager", [*torch, *r20, "--mode", "eager"], last_json),
        Item("resnet50_jax", [*throughput, *big], last_json),
        Item("resnet50_jax_one_pass", [*throughput, *big, "--model-kwargs", '{"bn_one_pass": true}'], last_json),
        Item("resnet50_torch_eager", [*torch, *big, "--mode", "eager"], last_json),
        *[Item(f"resnet50_torch_{m.replace('-', '_')}", [*torch, *big, "--mode", m], last_json)
          for m in s.compile_modes],
        *[Item(f"population_{k}", [*throughput, *r20, "--seeds", str(k), "--member-batching", "vmap"], last_json)
          for k in s.members],
        Item("study", [py, "-m", "resnet_jax.reproduce", f"--workdir={study_dir}", f"--only={','.join(study_models)}",
             f"--config.data.path={data}", "--config.data.pipeline=device", *s.study_args],
             study_result(study_dir, study_models)),
    ]  # fmt: skip
    return found


def figure(name: str, result: dict[str, Any], done: dict[str, dict[str, Any]]) -> str:
    """One line a person reads: images/s, with its ratio to the figure it is measured against."""
    if name == "study":
        return f"test error (%) {result['test_error_percent']}; unfinished at step {result['at_step']}"
    rate = result["train_images_per_s"]
    text = f"{rate:,.0f} img/s"
    peer = "resnet20_jax" if name.startswith("resnet20") else "resnet50_jax" if name.startswith("resnet50") else (
        "population_1")  # fmt: skip
    if peer != name and peer in done:
        other = done[peer]["result"]["train_images_per_s"]
        text += f" (JAX/PyTorch {other / rate:.2f})" if "torch" in name else (
            f" ({rate / other:.2f} of {peer})")  # fmt: skip
    if "pipeline_train_images_per_s" in result:
        text += f"; fed by the on-device pipeline {result['pipeline_train_images_per_s']:,.0f}"
    return text + (f"; {result['device']}" if "device" in result else "")


class Bench:
    """Runs the items one after another; what is measured is written at once."""

    def __init__(self, out: str, deadline_s: float) -> None:
        self.out, self.results = out, os.path.join(out, "results.jsonl")
        self.deadline = time.monotonic() + deadline_s if deadline_s > 0 else float("inf")
        self.stop_reason = ""
        self.child: subprocess.Popen | None = None
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)

    def done(self) -> dict[str, dict[str, Any]]:
        """The items measured by this or an earlier run of the same --out (the last record of each)."""
        records: dict[str, dict[str, Any]] = {}
        if os.path.isfile(self.results):
            with open(self.results) as f:
                for line in f:
                    r = json.loads(line)
                    records[r["item"]] = r
        return {k: r for k, r in records.items() if r["status"] == "done"}

    def stop(self, reason: str) -> None:
        """Stops the running item (SIGTERM to its process group) and every item after it."""
        self.stop_reason = self.stop_reason or reason
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, sig)

    def run(self, item: Item, cap_s: float) -> dict[str, Any]:
        """One item's record: done (with its result), failed, timed out (past its cap) or stopped."""
        log = os.path.join(self.out, "logs", f"{item.name}.log")
        t0, capped, grace = time.monotonic(), False, 60.0
        if item.fresh:
            shutil.rmtree(item.fresh, ignore_errors=True)
        with open(log, "w") as f:
            self.child = subprocess.Popen(item.command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                          start_new_session=True)  # fmt: skip
            while self.child.poll() is None:
                now = time.monotonic()
                if now > self.deadline and not self.stop_reason:
                    self.stop("its deadline")
                if now > t0 + cap_s and not capped:
                    capped = True
                    self._signal(signal.SIGTERM)
                if now > min(self.deadline, t0 + cap_s) + grace:
                    self._signal(signal.SIGKILL)
                time.sleep(0.2)
        code, self.child = self.child.returncode, None
        with open(log, errors="replace") as f:
            output = f.read()
        record = {"item": item.name, "command": shlex.join(item.command), "seconds": round(time.monotonic() - t0, 1),
                  "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": _commit()}  # fmt: skip
        try:
            result = item.read(output)
        except (ValueError, OSError, KeyError) as e:
            result, output = None, f"{output}\n(its result could not be read: {type(e).__name__}: {e})"
        if code == 0 and result is not None and result.get("finished", True):
            return {**record, "status": "done", "result": result}
        status = "stopped" if self.stop_reason else "timed out" if capped else "failed"
        return {**record, "status": status, "exit": code, "result": result,
                "error": output[-1500:] if result is None else ""}  # fmt: skip

    def write(self, record: dict[str, Any]) -> None:
        """`record` appended to results.jsonl, the file written again whole (never a record cut in half)."""
        earlier = ""
        if os.path.isfile(self.results):
            with open(self.results) as f:
                earlier = f.read()
        bench.write_text(self.results, earlier + json.dumps(record) + "\n")
        self.summary()

    def summary(self) -> None:
        """summary.md: a row per item measured so far, the latest record of each."""
        latest: dict[str, dict[str, Any]] = {}
        with open(self.results) as f:
            for line in f:
                r = json.loads(line)
                latest[r["item"]] = r
        done = {k: r for k, r in latest.items() if r["status"] == "done"}
        rows = ["| item | figure | status | date, commit | command |", "|---|---|---|---|---|"]
        for name, r in latest.items():
            text = figure(name, r["result"], done) if r.get("result") else r.get("error", "")[-200:]
            text = " ".join(text.split()).replace("|", "/")
            rows.append(f"| {name} | {text} | {r['status']} | {r['date']}, {r['commit']} | `{r['command']}` |")
        bench.write_text(os.path.join(self.out, "summary.md"), "\n".join(rows) + "\n")


def _commit() -> str:
    """The checkout's commit, or $RESNET_JAX_COMMIT in a copy without git (a tree copied to another machine)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("RESNET_JAX_COMMIT", "unknown")


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--data", required=True, help="a CIFAR-10 image folder root/{train,test}/<class>/<image>")
    p.add_argument("--out", required=True, help="where results.jsonl, summary.md, logs/ and the study go")
    p.add_argument("--items", default="", help="comma-separated name prefixes, e.g. resnet20,population")
    p.add_argument("--deadline-s", type=float, default=0, help="stop the running item and the rest after this")
    p.add_argument("--tiny", action="store_true", help="every item a few steps, to rehearse on a CPU")
    args = p.parse_args(argv)
    sizes = TINY if args.tiny else Sizes()
    out, data = os.path.abspath(args.out), bench.existing(os.path.abspath(args.data), "--data: an image folder")
    kept = f"{out}/results.jsonl keeps every figure measured before"
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner = Bench(out, args.deadline_s)
        for sig in previous:
            signal.signal(sig, lambda signum, frame: runner.stop(signal.Signals(signum).name))
        run_all(runner, sizes, data, out, args.items)
    except errors.UserError:
        raise
    except OSError as e:  # a log or the folder: <out> cannot be written
        raise errors.cannot_write_output(e.filename or out, e, kept) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not runner.stop_reason:
        return 0
    names = {"SIGINT": "Ctrl-C: bench/gpu.py stopped", "SIGTERM": "SIGTERM: bench/gpu.py stopped"}
    what = names.get(runner.stop_reason, f"bench/gpu.py stopped at its deadline (--deadline-s {args.deadline_s:g})")
    print(f"{what}; {runner.results} and summary.md hold every figure measured; the same command measures the rest",
          file=sys.stderr)  # fmt: skip
    return errors.EXIT_INTERRUPTED if runner.stop_reason == "SIGINT" else STOPPED


def run_all(runner: Bench, sizes: Sizes, data: str, out: str, selection: str) -> None:
    """Every item selected and not measured yet, in order, until the last or a stop."""
    wanted = [w for w in selection.split(",") if w]
    todo = [i for i in items(sizes, data, out) if not wanted or any(i.name.startswith(w) for w in wanted)]
    done = runner.done()
    for item in todo:
        if item.name in done:
            print(f"{item.name}: measured already ({done[item.name]['date']}, {done[item.name]['commit']})")
            continue
        if runner.stop_reason:
            break
        print(f"{item.name}: {item.command[1] if item.command[1] != '-m' else item.command[2]} ...", flush=True)
        cap = float("inf") if item.name == "study" else sizes.item_cap_s
        record = runner.run(item, cap)
        runner.write(record)
        done = runner.done()
        shown = figure(item.name, record["result"], done) if record.get("result") else record.get("error", "")[-300:]
        print(f"{item.name}: {record['status']}: {shown}", flush=True)
    left = [i.name for i in todo if i.name not in runner.done()]
    print(f"results: {runner.results}; not measured yet (the same command again): {', '.join(left) or 'none'}")


if __name__ == "__main__":
    bench.run(main, "results.jsonl and summary.md are as they were")
