"""bench/gpu.py rehearsed on the CPU: each figure is written the moment it is measured, a stop (SIGTERM or the
deadline) keeps what was measured and stops the running item, the same command again measures only the rest,
a real item measures on a tiny folder, and every throughput command of the plan parses."""

import argparse
import json
import os
import signal
import sys
import threading

import pytest

from bench import gpu


def fake(name: str, sleep_s: float, rate: float) -> gpu.Item:
    code = f"import time; time.sleep({sleep_s}); print('{{\"train_images_per_s\": {rate}}}')"
    return gpu.Item(name, [sys.executable, "-c", code], gpu.last_json)


def records(out) -> list[dict]:
    with open(out / "results.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def plan(monkeypatch):
    """The items a run sees: `plan[name] = (sleep_s, rate)`, in order."""
    chosen: dict[str, tuple[float, float]] = {}
    monkeypatch.setattr(gpu, "items", lambda sizes, data, out: [fake(n, *v) for n, v in chosen.items()])
    return chosen


def test_a_sigterm_keeps_what_was_measured_and_the_same_command_measures_the_rest(plan, tmp_path, capsys):
    out, args = tmp_path / "out", ["--data", str(tmp_path), "--out", str(tmp_path / "out")]
    plan.update(resnet20_jax=(0, 400.0), resnet20_torch_eager=(60, 100.0), population_4=(0, 900.0))
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    assert gpu.main(args) == gpu.STOPPED
    timer.join()
    first = records(out)
    assert [(r["item"], r["status"]) for r in first] == [("resnet20_jax", "done"), ("resnet20_torch_eager", "stopped")]
    assert first[0]["result"] == {"train_images_per_s": 400.0} and first[1]["seconds"] < 30  # stopped, not waited
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the benchmark's handlers are gone after it
    summary = (out / "summary.md").read_text()
    assert "| resnet20_jax | 400 img/s | done |" in summary

    plan.update(resnet20_torch_eager=(0, 100.0))
    assert gpu.main(args) == 0
    second = records(out)[2:]
    assert [(r["item"], r["status"]) for r in second] == [("resnet20_torch_eager", "done"), ("population_4", "done")]
    assert "resnet20_jax: measured already" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert "| resnet20_torch_eager | 100 img/s (JAX/PyTorch 4.00) | done |" in summary


def test_the_deadline_stops_the_running_item_and_starts_no_other(plan, tmp_path):
    plan.update(a=(0, 1.0), b=(60, 1.0), c=(0, 1.0))
    rc = gpu.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--deadline-s", "2"])
    assert rc == gpu.STOPPED
    assert [(r["item"], r["status"]) for r in records(tmp_path / "out")] == [("a", "done"), ("b", "stopped")]


@pytest.mark.slow
def test_a_real_item_measures_on_a_tiny_folder(image_folder, tmp_path):
    out = tmp_path / "out"
    assert gpu.main(["--data", str(image_folder), "--out", str(out), "--tiny", "--items", "resnet20_jax"]) == 0
    (r,) = records(out)
    assert r["status"] == "done" and r["result"]["model"] == "cifar_resnet20" and r["result"]["batch"] == 16
    assert r["result"]["train_images_per_s"] > 0 and r["result"]["pipeline_train_images_per_s"] > 0
    assert "throughput.py --steps 1 " in r["command"] and "--model cifar_resnet20 " in r["command"]
    assert r["result"]["model_kwargs"] == {"stage_sizes": [1, 1, 1], "stage_widths": [4, 8, 16]}  # narrow on a CPU


class Parsed(Exception):
    """Raised in place of running a benchmark once its arguments are parsed."""


@pytest.mark.parametrize("sizes", [gpu.Sizes(), gpu.TINY], ids=["gpu", "tiny"])
def test_every_throughput_item_passes_arguments_the_script_accepts(sizes, monkeypatch, tmp_path):
    """Each bench/throughput.py command of the plan parses (a renamed flag stops a GPU run at its first
    argument, which the rehearsal of one item does not see); nothing is measured."""
    from bench import throughput

    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)  # an unknown or malformed argument exits with status 2 here
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    plan = [i for i in gpu.items(sizes, str(tmp_path), str(tmp_path / "out")) if i.command[1].endswith("throughput.py")]
    assert {i.name for i in plan} >= {"resnet20_jax", "resnet50_jax", "population_1"}
    for item in plan:
        monkeypatch.setattr(sys, "argv", item.command[1:])
        with pytest.raises(Parsed):
            throughput.main()
