"""bench/gpu_suite.py in a 15-minute GPU lease, rehearsed on the CPU with --tiny (every item a few steps) on
the GPU machine's image (no TensorFlow or TFDS): a lease cut by SIGTERM keeps its figures and stops its
children; the next lease resumes the study from the carry and skips what is done, failed or timed out; a call
stops at a deadline counted from the command's start. The carry, the plan and the item rules in-process."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import ROOT, env_with_devices, wait_for

sys.path.insert(0, ROOT)
from bench import gpu_suite  # noqa: E402


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


def survivors(pgid: int, marker: str) -> list[str]:
    """Live (not zombie) processes in process group `pgid` or whose command line holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and state != "Z" and (int(group) == pgid or marker in cmdline):
            found.append(f"{pid} {state} {cmdline[:200]}")
    return found


@pytest.fixture
def suite_env(image_folder, tmp_path):
    """The environment, the data as a tarball (extracted by the suite) and a fresh plan pinned by flags."""
    env = without_tensorflow(env_with_devices(1), tmp_path / "no_tensorflow")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, "images")
    data, plan = str(tmp_path / "d" / "images"), str(tmp_path / "plan.json")
    base = [sys.executable, os.path.join(ROOT, "bench", "gpu_suite.py"), "--tiny", "--data", data,
            "--data-tar", str(archive), "--plan", plan]  # fmt: skip
    return env, base


def test_a_lease_cut_by_sigterm_keeps_its_figures_and_the_next_lease_resumes_from_the_carry(suite_env, tmp_path):
    env, base = suite_env
    out1, exp1 = tmp_path / "out1", tmp_path / "exp1"
    cmd1 = [*base, "--out", str(out1), "--export", str(exp1), "--seeds", "1", "--parallel", "1", "--deadline-s", "1200"]
    suite = subprocess.Popen(cmd1, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # fmt: skip
    metrics = out1 / "study" / "cifar_resnet20" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and '"train"' in metrics.read_text(), suite, 900)
    # $OUT already holds every item done before the study (exported after each one, not at the end).
    early = json.loads((exp1 / "summary.json").read_text())["items"]
    assert early["speed/cifar_resnet20"]["status"] == "done" and early["packing/processes_2"]["status"] == "done"
    suite.send_signal(signal.SIGTERM)  # as the device tool's limit does
    t0 = time.time()
    output = suite.communicate(timeout=120)[0]
    assert survivors(suite.pid, str(tmp_path)) == []  # the study, the referee, every benchmark: stopped with it
    assert suite.returncode == 3, output[-3000:]
    assert time.time() - t0 < 60, output[-3000:]

    exported = sorted(os.listdir(exp1))
    assert exported == ["ckpt.tar.000", "figure.png", "study.tar.gz", "summary.json", "summary.md", "table.md"]
    state = json.loads((exp1 / "summary.json").read_text())
    items, call = state["items"], state["calls"][-1]
    assert call["stopped_by"] == "SIGTERM" and call["data"].startswith("extracted in")
    # speed first, then packing: all done but max-autotune, which ran past its cap
    speed = [n for n in items if n.startswith("speed/")]
    assert speed == ["speed/cifar_resnet20", "speed/cifar_resnet20_b16_one_pass",
                     "speed/cifar_resnet20_b16_torch_eager", "speed/cifar_resnet20_b16_torch_max_autotune"]  # fmt: skip
    assert items["speed/cifar_resnet20_b16_torch_max_autotune"]["status"] == "timed out"
    assert all(items[n]["status"] == "done" for n in speed[:-1])
    assert "fed by the on-device pipeline" in items["speed/cifar_resnet20"]["figure"]
    assert items["speed/cifar_resnet20_b16_one_pass"]["result"]["model_kwargs"] == {"bn_one_pass": True}
    assert items["speed/cifar_resnet20_b16_torch_eager"]["result"]["train_images_per_s"] > 0
    for name in ("packing/vmap_1", "packing/vmap_2", "packing/processes_2"):
        assert items[name]["status"] == "done" and items[name]["images_per_s"] > 0, name
    assert items["packing/vmap_1"]["source"] == "speed/cifar_resnet20"  # measured once
    assert items["packing/vmap_2"]["result"]["seeds"] == 2 and len(items["packing/processes_2"]["per_process"]) == 2
    assert "no nvidia-cuda-mps-control" in items["packing/processes_2_mps"]["figure"]
    # the study: cut short (not "failed"), in the order of value, K pinned by the plan
    study = items["study"]
    assert study["status"] == "cut short" and study["pending"] == ["cifar_resnet20", "cifar_plain20"]
    assert "--only=cifar_resnet20,cifar_plain20" in study["command"] and "--seeds=1" in study["command"]
    step = state["carry"]["checkpoints"]["study/cifar_resnet20"]
    assert 0 < step < 256 and state["carry"]["parts"] == ["ckpt.tar.000"]
    # commands shell-quoted in summary.md
    md = (exp1 / "summary.md").read_text()
    assert "--model-kwargs '{\"bn_one_pass\": true}'" in md and md.count("\n") == 2 + len(items)
    with tarfile.open(exp1 / "study.tar.gz") as tar:
        small = set(tar.getnames())
    assert {"study/cifar_resnet20/config.json", "study/cifar_resnet20/metrics.jsonl"} <= small

    # The CPU side files the carry; the next lease (a fresh machine: a new --out) resumes from it.
    carried = tmp_path / "results"
    gpu_suite.collect(str(exp1), str(carried))
    assert os.listdir(carried / "ckpt") == ["ckpt.tar.000"] and (carried / "study" / "cifar_resnet20").is_dir()
    out2, exp2 = tmp_path / "out2", tmp_path / "exp2"
    cmd2 = [*base, "--out", str(out2), "--export", str(exp2), "--resume-from", str(carried), "--deadline-s", "1200"]
    again = subprocess.run(cmd2, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "not done yet (the same command again): none" in again.stdout, again.stdout[-3000:]
    state2 = json.loads((out2 / "summary.json").read_text())
    assert state2["calls"][-1]["data"] == "present"  # extracted once per machine
    # finished and timed-out items were not run again: no log of theirs on the new machine
    referee_left = items["referee/cifar_resnet20"]["status"] != "done"
    assert sorted(os.listdir(out2 / "logs")) == ["referee_cifar_resnet20.log"] * referee_left + ["study.log"]
    for name in speed + ["packing/vmap_2", "packing/processes_2"]:
        assert state2["items"][name] == items[name], name
    assert state2["items"]["study"]["status"] == "done"
    assert f"at step {step}." in (out2 / "logs" / "study.log").read_text()  # resumed from the carried checkpoint
    assert set(state2["items"]["study"]["test_errors"]) == {"cifar_resnet20", "cifar_plain20"}
    with open(out2 / "study" / "cifar_resnet20" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps[0] <= step < steps[-1] == 256  # the first lease's curve, continued
    assert state2["items"]["referee/cifar_resnet20"]["status"] == "done"
    assert "ckpt.tar.000" not in os.listdir(exp2)  # nothing unfinished left to carry


def test_a_call_stops_at_its_deadline_counted_from_the_command_start(suite_env, tmp_path):
    env, base = suite_env
    # The first item must outlast the 10 s left: compiled at XLA's default level, not taken from the cache.
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_ENABLE_COMPILATION_CACHE="false")
    out, exp = tmp_path / "out", tmp_path / "exp"
    started = time.time() - 100  # the installs before the suite took 100 s of the call's 114
    cmd = [*base, "--out", str(out), "--export", str(exp), "--parts", "speed", "--started-at", str(started),
           "--deadline-s", "114", "--reserve-s", "4"]  # fmt: skip
    suite = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # fmt: skip
    output = suite.communicate(timeout=120)[0]
    assert suite.returncode == 0, output[-3000:]
    assert time.time() < started + 114 + 5, output[-3000:]  # not 114 s from the suite's own start
    assert survivors(suite.pid, str(tmp_path)) == []
    state = json.loads((exp / "summary.json").read_text())
    first = state["items"]["speed/cifar_resnet20"]  # started with 10 s left, stopped at the call's end
    assert first["status"] == "cut short" and state["calls"][-1]["stopped_by"] == "deadline"
    assert len(state["items"]) == 1  # nothing started after the stop
    assert gpu_suite.Suite("", "", gpu_suite.TINY, 0, 0, 0, [], state=state).should_run("speed/cifar_resnet20")


def test_the_carry_holds_the_latest_checkpoint_of_unfinished_runs_in_parts_and_resumes_where_it_matches(tmp_path):
    out = tmp_path / "out"

    def write(path, data: bytes = b"x") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    unfinished, finished = out / "study" / "cifar_resnet20", out / "study" / "cifar_plain20"
    for run in (unfinished, finished):
        write(run / "config.json", json.dumps({"num_train_steps": 100, "num_seeds": 1}).encode())
        write(run / "metrics.jsonl", b'{"step": 1}\n')
        for step in (5, 10):
            write(run / "checkpoints" / str(step) / "_CHECKPOINT_METADATA")
            write(run / "checkpoints" / str(step) / "state" / "d" / "blob", os.urandom(2500) + bytes([step]))
    write(unfinished / "checkpoints" / "12.orbax-checkpoint-tmp-1" / "state" / "blob")  # a save cut off
    write(unfinished / "lock")
    write(finished / "result.json", json.dumps({"seeds": [{"final_test_error": 0.25}]}).encode())
    write(out / "referee" / "cifar_resnet20.pt", os.urandom(1500))
    suite = gpu_suite.Suite(str(out), "", gpu_suite.TINY, 0, 0, 0, [], state={"items": {}, "calls": [{}]})
    # Too many parts for $OUT beside the summary: none exported (a partial checkpoint is useless), and said so.
    exp = tmp_path / "exp"
    carry = gpu_suite.build_carry(suite, part_bytes=1000)
    assert len(carry["parts"]) > 3 and "not exported" in carry["error"]
    gpu_suite.export(str(out), str(exp), suite.state)
    assert not list(exp.glob("ckpt.tar.*")) and (exp / "study.tar.gz").is_file()
    carry = gpu_suite.build_carry(suite, part_bytes=4000)
    assert carry["checkpoints"] == {"study/cifar_resnet20": 10, "referee/cifar_resnet20.pt": "latest epoch"}
    parts = sorted((out / "carry").glob("ckpt.tar.*"))
    assert [p.name for p in parts] == carry["parts"] and all(p.stat().st_size == 4000 for p in parts[:-1])
    assert len(parts) == -(-carry["bytes"] // 4000) == 3 and "error" not in carry
    with tarfile.open(out / "carry" / "study.tar.gz") as tar:
        assert sorted(tar.getnames()) == [
            "study/cifar_plain20/config.json", "study/cifar_plain20/metrics.jsonl", "study/cifar_plain20/result.json",
            "study/cifar_resnet20/config.json", "study/cifar_resnet20/metrics.jsonl",
        ]  # fmt: skip
    progress = gpu_suite.study_progress(str(out / "study"), ("cifar_resnet20", "cifar_plain20"))
    assert progress["test_errors"] == {"cifar_plain20": [25.0]} and progress["pending"] == ["cifar_resnet20"]
    assert progress["at_step"] == {"cifar_resnet20": "10 of 100"}
    suite.save()
    gpu_suite.export(str(out), str(exp), suite.state)
    assert sorted(p.name for p in exp.glob("ckpt.tar.*")) == carry["parts"]

    # A fresh --out resumes: the latest checkpoint only, byte for byte.
    fresh = gpu_suite.Suite(str(tmp_path / "fresh"), "", gpu_suite.TINY, 0, 0, 0, [])
    os.makedirs(fresh.out)
    said = gpu_suite.resume_from(fresh, str(exp))
    assert "checkpoints" in said and "restarts" not in said
    got = tmp_path / "fresh" / "study" / "cifar_resnet20"
    assert os.listdir(got / "checkpoints") == ["10"] and not (got / "lock").exists()
    for a, b in ((got, unfinished), (tmp_path / "fresh", out)):
        name = "checkpoints/10/state/d/blob" if a == got else "referee/cifar_resnet20.pt"
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert not (tmp_path / "fresh" / "study" / "cifar_plain20" / "checkpoints").exists()
    # A damaged part is not used: the unfinished run starts again cleanly, the finished one stays.
    with open(exp / carry["parts"][1], "r+b") as f:
        f.write(b"?")
    broken = gpu_suite.Suite(str(tmp_path / "broken"), "", gpu_suite.TINY, 0, 0, 0, [])
    os.makedirs(broken.out)
    said = gpu_suite.resume_from(broken, str(exp))
    assert "do not match" in said and "cifar_resnet20 restarts" in said
    assert not (tmp_path / "broken/study/cifar_resnet20").exists()
    assert (tmp_path / "broken/study/cifar_plain20/result.json").is_file()


def test_items_that_failed_or_timed_out_wait_for_retry_and_the_plan_pins_the_study(tmp_path):
    items = {"a/done": {"status": "done"}, "a/failed": {"status": "failed"}, "b/slow": {"status": "timed out"},
             "a/cut": {"status": "cut short"}, "study": {"status": "waiting"}}  # fmt: skip
    suite = gpu_suite.Suite("", "", gpu_suite.TINY, 0, 0, 0, [], state={"items": items})
    assert [n for n in [*items, "new"] if suite.should_run(n)] == ["a/cut", "study", "new"]
    suite.retry = ("a/failed", "b")
    assert suite.should_run("a/failed") and suite.should_run("b/slow") and not suite.should_run("a/done")

    # K and the parallelism: flags write a plan that does not exist; they cannot change one that does.
    plan = tmp_path / "plan.json"
    assert gpu_suite.load_plan(str(plan), None, None) == {}
    assert gpu_suite.load_plan(str(plan), 2, 1)["seeds"] == 2 and json.loads(plan.read_text())["parallel"] == 1
    assert gpu_suite.load_plan(str(plan), None, None)["seeds"] == 2
    assert gpu_suite.load_plan(str(plan), 2, None)["seeds"] == 2
    with pytest.raises(ValueError, match="pins seeds=2"):
        gpu_suite.load_plan(str(plan), 4, 1)
    run = subprocess.run([sys.executable, "bench/gpu_suite.py", "--data", "x", "--out", str(tmp_path / "o"),
                          "--plan", str(plan), "--seeds", "1"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "pins seeds=2" in run.stderr

    workdir = tmp_path / "study"
    suite.plan = {"seeds": 2, "parallel": 1, "min_gain": 1.3}
    suite.state["items"] = {"packing/vmap_1": {"images_per_s": 100.0}, "packing/vmap_2": {"images_per_s": 120.0}}
    assert "under plan.json's min_gain 1.3" in gpu_suite.plan_blocker(suite, str(workdir))
    suite.state["items"]["packing/vmap_2"]["images_per_s"] = 150.0
    assert gpu_suite.plan_blocker(suite, str(workdir)) == ""
    (workdir / "cifar_resnet20").mkdir(parents=True)
    (workdir / "cifar_resnet20" / "config.json").write_text(json.dumps({"num_seeds": 1}))
    assert "started with {'cifar_resnet20': 1}" in gpu_suite.plan_blocker(suite, str(workdir))
    no_plan = gpu_suite.Suite("", "", gpu_suite.TINY, 0, 0, 0, [])
    assert gpu_suite.plan_blocker(no_plan, str(workdir)).startswith("no plan")

    # A crash is "failed" with its log's tail, not "partial".
    log = tmp_path / "study.log"
    log.write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'cloudpickle'\n")
    r = gpu_suite.study_result(suite, str(workdir), "exited", 1, str(log), [sys.executable, "-m", "x"], 12.0)
    assert r["status"] == "failed" and "exit 1" in r["error"] and "cloudpickle" in r["error"]
    assert r["command"] == "python3 -m x"
