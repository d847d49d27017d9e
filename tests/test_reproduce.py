"""The paper's study (python -m resnet_jax.reproduce): plan, runs, resume, report, figures."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NARROW_RESNET8, env_with_devices, wait_for

from resnet_jax import models
from resnet_jax.errors import ConfigError
from resnet_jax.models.responses import response_std
from resnet_jax.reproduce import report, study

PNG = b"\x89PNG\r\n\x1a\n"
SCALE = 0.0005  # 32 steps of the paper's schedule for each network
# The paper's networks with the blocks of a narrow ResNet-8, as a user's --config.model_kwargs sets them.
NARROW = dict(NARROW_RESNET8, zero_init_residual=False)


def study_cmd(folder, workdir, *extra):
    return [
        sys.executable, "-m", "resnet_jax.reproduce", f"--workdir={workdir}", "--only=cifar_plain20,cifar_resnet20",
        f"--config.data.path={folder}", "--config.data.image_size=16", "--config.data.pipeline=device",
        "--config.batch_size=16", "--config.eval_batch_size=16", f"--config.model_kwargs={NARROW!r}", *extra,
    ]  # fmt: skip


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_study_is_stopped_resumed_in_parallel_reported_and_skipped(image_folder, tmp_path):
    """Two seeds a network trained together; SIGTERM stops the study, the same
    command with --parallel=2 resumes the stopped network and trains the other
    one in two processes; the report, and a third command that trains nothing."""
    workdir = tmp_path / "study"
    cmd = study_cmd(image_folder, workdir, f"--scale={SCALE}", "--evals=4", "--seeds=2")
    # 1. SIGTERM once the first network has evaluated once: it saves and the study stops.
    proc = subprocess.Popen(cmd, env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "cifar_plain20" / "seed0" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and '"eval"' in metrics.read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-3000:]
    assert "cifar_plain20 stopped before its end" in out
    assert out.rstrip().splitlines()[-1] == (  # what it wrote, and no figure7.png (no run has finished)
        "SIGTERM: the study stopped before its end (runs to finish: cifar_plain20, cifar_resnet20); wrote "
        f"results.json, table.md, figure.png in {workdir} from the runs finished so far; the same command resumes"
    )
    assert not (workdir / "figure7.png").exists() and (workdir / "figure.png").read_bytes().startswith(PNG)
    assert "legend" not in out  # matplotlib's "No artists with labels found to put in legend" (no ResNet curve yet)
    assert not (workdir / "cifar_plain20" / "result.json").exists()
    assert not (workdir / "cifar_resnet20").exists()  # no new run starts after SIGTERM

    # 2. The same command, two networks at a time: it resumes the stopped one and trains the other.
    out = subprocess.run([*cmd, "--parallel=2"], env=env_with_devices(1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 run(s), 2 to train" in out.stdout
    assert out.stdout.rstrip().splitlines()[-1] == (
        f"Done: wrote results.json, table.md, figure.png, figure7.png in {workdir}."
    )
    assert "cifar_plain20: started (2 seeds together in one step, 32 steps" in out.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["scale"] == SCALE and results["steps_per_run"] == 32 and results["pending"] == []
    assert [s["parallel"] for s in results["sittings"]] == [1, 2]
    assert sorted((r["model"], r["seed"], r["seed_index"]) for r in results["runs"]) == [
        ("cifar_plain20", 0, 0), ("cifar_plain20", 1, 1), ("cifar_resnet20", 0, 0), ("cifar_resnet20", 1, 1)
    ]  # fmt: skip
    table = (workdir / "table.md").read_text()
    for model in ("cifar_plain20", "cifar_resnet20"):
        log = (workdir / model / "train.log").read_text()
        assert "2 networks (seed0, seed1) train together in one step, looped (one after another)" in log
        assert "Done: step 32" in log and ("Resumed from" in log) == (model == "cifar_plain20")
        errors = []
        for r in (r for r in results["runs"] if r["model"] == model):
            seed_dir = workdir / model / f"seed{r['seed_index']}"
            evals = [m for m in read_jsonl(seed_dir / "metrics.jsonl") if m["split"] == "eval"]
            assert [m["step"] for m in evals][-4:] == [8, 16, 24, 32]
            assert r["final_test_error"] == pytest.approx(1 - evals[-1]["top1"])
            assert r["best_test_error"] == pytest.approx(1 - max(m["top1"] for m in evals))
            assert r["steps"] == 32 and r["params"] == 4_887 and r["seeds_together"] == 2  # 3 classes
            assert r["layers"] == 8  # ResNet-20's recipe on ResNet-8's blocks: the table says what was trained
            assert len(r["layer_response_std"]) == 7  # the stem and 6 3x3 layers
            assert (seed_dir / "curves.png").read_bytes().startswith(PNG)
            errors.append(100 * r["final_test_error"])
        mean, std = np.mean(errors), np.std(errors, ddof=1)
        assert f"{mean:.2f} ± {std:.2f} (best {min(errors):.2f})" in table
    assert "mean ± std over 2 seeds" in table
    assert "| ResNet | 8 | 4.9K |" in table and "| 8.75 |" in table and f"scale {SCALE}" in table.lower()
    for name in ("figure.png", "figure7.png"):
        assert (workdir / name).read_bytes().startswith(PNG)

    # 3. Again, as the command plans it: every run has its result, none is left to train.
    overrides = {"data.path": image_folder, "data.image_size": 16, "data.pipeline": "device", "batch_size": 16,
                 "eval_batch_size": 16, "model_kwargs": NARROW}  # fmt: skip
    runs = study.plan("cifar10", str(workdir), ["cifar_plain20", "cifar_resnet20"], 2, SCALE, 4, overrides)
    assert sorted(r.model for r in runs if study.read_result(r) is not None) == ["cifar_plain20", "cifar_resnet20"]
    study.check_schedules(runs)  # the same schedule: resumable

    # 4. Another scale in the same workdir is refused with one message (the CLI prints it as one line).
    assert study.check_study_state(str(workdir), "cifar10", SCALE)["scale"] == SCALE
    with pytest.raises(ConfigError, match=r"at scale 0.0005, not 'cifar10' at scale 0.01; use another --workdir"):
        study.check_study_state(str(workdir), "cifar10", 0.01)


def test_plan_scales_the_recipe_and_applies_overrides_to_every_run(tmp_path):
    runs = study.plan("cifar10", str(tmp_path), scale=0.5, evals=10, overrides={"data.path": "/x", "seed": 7})
    assert [r.model for r in runs] == list(study.STUDIES["cifar10"])
    for r in runs:
        c = r.config
        assert (c.num_train_steps, tuple(c.lr_boundaries), c.eval_every_steps) == (32000, (16000, 24000), 3200)
        assert c.data.path == "/x" and c.seed == 7 and r.workdir == str(tmp_path / r.model)
        assert c.warmup_constant_steps == (200 if r.model == "cifar_resnet110" else 0)  # the paper's 400, halved
    [packed] = study.plan("cifar10", str(tmp_path), only=["cifar_resnet1202"], seeds=3)
    assert (packed.config.seed, packed.num_seeds, packed.workdir) == (0, 3, str(tmp_path / "cifar_resnet1202"))
    with pytest.raises(ConfigError, match="--only"):
        study.plan("cifar10", str(tmp_path), overrides={"model": "cifar_resnet20"})
    with pytest.raises(ConfigError, match="cifar_preact_resnet110"):
        study.plan("cifar10", str(tmp_path), only=["cifar_preact_resnet110"])
    with pytest.raises(ConfigError, match="positive"):
        study.plan("cifar10", str(tmp_path), scale=0)


def test_a_run_started_with_another_schedule_is_refused(tmp_path):
    run = study.plan("cifar10", str(tmp_path), only=["cifar_resnet20"], scale=0.01)[0]
    os.makedirs(run.workdir)
    other = study.plan("cifar10", str(tmp_path), only=["cifar_resnet20"], scale=0.02)[0]
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
        f.write(other.config.to_json_best_effort())
    with pytest.raises(ConfigError, match="num_train_steps=1280, this study has num_train_steps=640"):
        study.check_schedules([run])
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
        f.write(run.config.to_json_best_effort())
    study.check_schedules([run])  # the same schedule resumes


def test_table_shows_mean_std_and_best_over_seeds():
    runs = [
        {"model": "cifar_resnet110", "params": 1_727_962, "final_test_error": e, "best_test_error": e - 0.01,
         "final_train_error": 0.01, "wall_seconds": 10.0, "seed_index": k, "seeds_together": 3}
        for k, e in enumerate([0.07, 0.08, 0.09])
    ]  # fmt: skip
    results = {"runs": runs, "scale": 1.0, "steps_per_run": 64000, "batch_size": 128, "data": "D", "pending": [],
               "sittings": [{"seconds": 30.0}]}  # fmt: skip
    table = report.table_markdown(results)
    assert "| ResNet | 110 | 1.73M | 8.00 ± 1.00 (best 7.00) |" in table
    assert "6.43 (6.61±0.16)" in table and "mean ± std over 3 seeds" in table
    assert table.splitlines()[-3].endswith("| 10 |")  # 3 seeds trained together: 10 s, not 30


def test_layer_responses_of_zero_residuals_are_zero_and_plain_ones_are_not():
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    responses = {}
    for name, kwargs in (("cifar_resnet20", {"zero_init_residual": True}), ("cifar_plain20", {})):
        model = models.create(name, **kwargs)
        variables = model.init(jax.random.key(1), x, train=False)
        responses[name] = response_std(model, variables, [x[:2], x[2:]])
    names = list(responses["cifar_plain20"])
    assert names[:3] == ["stem_bn", "stage1/block0/bn1", "stage1/block0/bn2"] and len(names) == 19
    assert names[-1] == "stage3/block2/bn2"
    residual = responses["cifar_resnet20"]
    assert all(residual[n] == 0.0 for n in names if n.endswith("bn2"))  # each residual function starts at 0
    assert all(residual[n] > 0.0 for n in names if not n.endswith("bn2"))
    assert min(responses["cifar_plain20"].values()) > 0.01  # a plain network has no zero layer


def test_layer_response_is_the_per_channel_std_averaged_over_channels():
    model = models.create("cifar_plain20")
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
    variables = model.init(jax.random.key(3), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    y = state["intermediates"]["stage2"]["block1"]["bn1"]["__call__"][0]
    expected = float(jnp.mean(jnp.std(y, axis=(0, 1, 2))))
    got = response_std(model, variables, [x])["stage2/block1/bn1"]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
