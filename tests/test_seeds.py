"""Seeds trained together (config.num_seeds): each seed is its own run, in one compiled step."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import env_with_devices, tiny_config

import resnet_jax
from resnet_jax.errors import CheckpointMismatchError, ConfigError
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.loop import train_and_evaluate

TESTS = os.path.dirname(os.path.abspath(__file__))
# lr 0.01: at the fixture's 0.05 the first steps amplify float rounding (1e-7 after step 1, 5e-5 after step 2).
# A ResNet-8 (one block a stage) compiles in a third of ResNet-20's time.
DEVICE = {"data.pipeline": "device", "ema_decay": 0.9, "learning_rate": 0.01, "lr_schedule": "piecewise",
          "lr_boundaries": (3,), "model_kwargs.stage_sizes": (1, 1, 1)}  # fmt: skip


def leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def train_records(path):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


@pytest.mark.parametrize("member_batching", ["vmap", "loop"])
def test_seeds_trained_together_equal_each_seed_trained_alone(image_folder, tmp_path, member_batching):
    """2 seeds for 4 steps (an epoch boundary and a mid-epoch stop) in one step
    == seed 0 and seed 1 each in a run of its own: parameters, batch statistics,
    their EMA, training losses and evaluation. (The vmapped convolutions sum in
    another order; the momentum traces, made of the last gradients, differ most:
    up to 1.5% in step 4 of seed 1, while parameters differ by 5e-6.)"""
    config = tiny_config(image_folder, num_train_steps=4, num_seeds=2, member_batching=member_batching, **DEVICE)
    packed = train_and_evaluate(config, str(tmp_path / "k2"))
    assert len(packed["eval"]["per_member"]) == 2
    for k in range(2):
        alone_dir = str(tmp_path / f"alone{k}")
        alone = train_and_evaluate(tiny_config(image_folder, num_train_steps=4, seed=k, **DEVICE), alone_dir)
        a = leaves(Checkpointer(alone_dir).restore_tree())
        b = leaves(jax.tree_util.tree_map(lambda x, k=k: x[k], Checkpointer(str(tmp_path / "k2")).restore_tree()))
        assert a.keys() == b.keys() and int(a["['step']"]) == int(b["['step']"]) == 4
        groups = {"['params'", "['batch_stats'", "['ema_params'", "['ema_batch_stats'"}
        variables = [key for key in a if key.split("]")[0] in groups]
        assert {key.split("]")[0] for key in variables} == groups
        for key in variables:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=5e-5, err_msg=key)
        seed_dir = tmp_path / "k2" / f"seed{k}"
        together, single = train_records(seed_dir / "metrics.jsonl"), train_records(f"{alone_dir}/metrics.jsonl")
        assert [r["step"] for r in together] == [r["step"] for r in single] == [1, 2, 3, 4]  # log_every_steps=1
        np.testing.assert_allclose([r["loss"] for r in together], [r["loss"] for r in single], rtol=1e-5)
        assert packed["eval"]["per_member"][k]["top1"] == pytest.approx(alone["eval"]["top1"])
        assert (seed_dir / "curves.png").exists()
        # restore() of the seed's folder gives that seed's model and metrics.
        _, variables, info = resnet_jax.restore(str(seed_dir))
        _, alone_variables, _ = resnet_jax.restore(alone_dir)
        assert info["seed"] == k and info["metrics"]["top1"] == pytest.approx(alone["eval"]["top1"])
        for key, x in leaves(alone_variables).items():
            np.testing.assert_allclose(leaves(variables)[key], x, rtol=1e-4, atol=5e-5, err_msg=key)
    with pytest.raises(ConfigError, match="holds 2 networks trained together: restore one with member=k"):
        resnet_jax.restore(str(tmp_path / "k2"))
    with pytest.raises(CheckpointMismatchError, match="num_seeds=2, but this run has num_seeds=3"):
        train_and_evaluate(tiny_config(image_folder, num_train_steps=8, num_seeds=3, **DEVICE), str(tmp_path / "k2"))


def test_seeds_need_the_device_pipeline_and_their_own_initialisation(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="needs data.pipeline='device'"):
        train_and_evaluate(tiny_config(image_folder, num_seeds=2), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="unknown member_batching 'pmap'"):
        config = tiny_config(image_folder, num_seeds=2, member_batching="pmap", **DEVICE)
        train_and_evaluate(config, str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="init_from needs num_seeds=1"):
        train_and_evaluate(tiny_config(image_folder, num_seeds=2, init_from="x", **DEVICE), str(tmp_path / "b"))


def test_a_population_killed_with_sigkill_and_restarted_ends_where_the_uninterrupted_run_does(image_folder, tmp_path):
    """2 learning rates x 2 seeds, killed by SIGKILL in step 5 (checkpoint at
    step 4, mid-epoch), then the same run again: bit-identical to an uninterrupted run."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from conftest import tiny_config
        from resnet_jax.training import checkpoint
        from resnet_jax.training.loop import train_and_evaluate

        workdir, kill_after = sys.argv[1], int(sys.argv[2])
        save = checkpoint.Checkpointer.save

        def save_then_kill(self, state, *args, **kwargs):
            save(self, state, *args, **kwargs)
            if int(state.step[0]) == kill_after:
                self.wait()
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.Checkpointer.save = save_then_kill
        cfg = dict(num_train_steps=8, num_seeds=2, sweep="learning_rate=0.01,0.02", checkpoint_every_steps=2,
                   **{DEVICE!r})
        train_and_evaluate(tiny_config({image_folder!r}, **cfg), workdir)
    """))

    def run(workdir, kill_after):
        cmd = [sys.executable, str(script), str(tmp_path / workdir), str(kill_after)]
        return subprocess.run(cmd, env=env_with_devices(1), capture_output=True, text=True, timeout=600)

    killed = run("resumed", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert Checkpointer(str(tmp_path / "resumed")).latest_step() == 4
    resumed, straight = run("resumed", -1), run("straight", -1)
    for done in (resumed, straight):
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Resumed from" in resumed.stdout and "at step 4" in resumed.stdout
    a = leaves(Checkpointer(str(tmp_path / "straight")).restore_tree(8))
    b = leaves(Checkpointer(str(tmp_path / "resumed")).restore_tree(8))
    assert a.keys() == b.keys() and a["['params']['head']['kernel']"].shape[0] == 4
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
