"""bench/gpu_suite.py --tiny: every part of the GPU suite runs a few steps on the CPU, as on the GPU
machine's image (no TensorFlow or TFDS), so it cannot rot."""

import json
import os
import subprocess
import sys
import time

from conftest import ROOT, env_with_devices


def without_tensorflow(env: dict, folder) -> dict:
    """`env` whose Pythons (the suite's subprocesses too) cannot import TensorFlow or TFDS."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\nfor name in ('tensorflow', 'tensorflow_datasets'):\n    sys.modules[name] = None\n"
    )
    env = dict(env, PYTHONPATH=f"{folder}{os.pathsep}{env['PYTHONPATH']}")
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow_datasets"], env=env, capture_output=True)
    assert blocked.returncode != 0 and b"halted" in blocked.stderr
    return env


def test_tiny_suite_runs_every_part_writes_its_summary_and_skips_what_is_done(image_folder, tmp_path):
    out, export = tmp_path / "suite", tmp_path / "export"
    env = without_tensorflow(env_with_devices(1), tmp_path / "no_tensorflow")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu_suite.py"), "--tiny", "--data", image_folder,
           "--out", str(out), "--budget-s", "1200", "--export", str(export)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "not done yet (run the same command again): none" in run.stdout, run.stdout[-3000:]
    items = json.loads((out / "summary.json").read_text())["items"]
    assert {n for n, r in items.items() if r["status"] == "done"} == set(items)
    # 1. packing: one run, 2 seeds vmapped, 2 processes (MPS is named as not run on a CPU)
    for name in ("packing/vmap_1", "packing/vmap_2", "packing/processes_2"):
        assert items[name]["images_per_s"] > 0 and "img/s in all" in items[name]["figure"], name
    assert items["packing/vmap_2"]["result"]["seeds"] == 2
    assert len(items["packing/processes_2"]["per_process"]) == 2
    assert "no nvidia-cuda-mps-control" in items["packing/processes_2_mps"]["figure"]
    # 2. the study with the fastest packing, 3. the referee beside it
    study = items["study"]
    assert study["pending"] == [] and 0 <= study["test_errors"]["cifar_resnet20"][0] <= 100
    assert len(study["test_errors"]["cifar_resnet20"]) == study["seeds"] and "--seeds" in study["command"]
    referee = items["referee/cifar_resnet20"]["result"]
    assert referee["steps"] == 13 and 0 <= referee["test_top1"] <= 1
    # 4. speed: the bare step, the pipeline-fed step, PyTorch beside
    assert "fed by the on-device pipeline" in items["speed/cifar_resnet20_pipeline"]["figure"]
    assert "PyTorch eager" in items["speed/cifar_resnet20_vs_torch_eager"]["figure"]
    assert items["speed/cifar_resnet20_b16_one_pass"]["result"]["model_kwargs"] == {"bn_one_pass": True}
    rows = (out / "summary.md").read_text().splitlines()
    assert len(rows) == 2 + len(items) and rows[2].startswith("| packing/vmap_1 | done |")
    exported = sorted(os.listdir(export))
    assert exported == ["figure.png", "figure7.png", "study_results.json", "summary.json", "summary.md", "table.md"]
    # The same command again finds everything done and trains nothing.
    t0 = time.time()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "not done yet (run the same command again): none" in again.stdout
    assert time.time() - t0 < 30 and json.loads((out / "summary.json").read_text())["items"] == items
