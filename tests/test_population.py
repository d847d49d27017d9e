"""Populations (config.sweep x config.num_seeds): members trained together in one
compiled step equal each member trained alone; checkpoints written before the
population axis (tests/fixtures/ckpt_860d72c) still restore, evaluate and resume."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import env_with_devices, tiny_config, train_steps
from fixtures import make_one_member as one_member
from fixtures.make_checkpoints import HERE as FIXTURES
from fixtures.make_checkpoints import fixture_config

import resnet_jax
from resnet_jax.errors import CheckpointMismatchError, ConfigError
from resnet_jax.evaluate import evaluate_checkpoint
from resnet_jax.plot import read_metrics
from resnet_jax.training import population
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.loop import train_and_evaluate

TESTS = os.path.dirname(os.path.abspath(__file__))
# One block a stage of 4-8-16 filters, as the fixtures: compiles in seconds.
SMALL = {"data.pipeline": "device", "learning_rate": 0.01, "lr_schedule": "cosine", "warmup_epochs": 1.0,
         "model_kwargs.stage_sizes": (1, 1, 1), "model_kwargs.stage_widths": (4, 8, 16)}  # fmt: skip


def leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def variables_of(state):
    """The parameters, batch statistics and EMA of a train state, by path."""
    return leaves({k: getattr(state, k) for k in ("params", "batch_stats", "ema_params")})


@pytest.mark.slow
def test_a_learning_rate_by_weight_decay_grid_steps_as_its_members_alone(image_folder):
    """A 2 x 2 grid of learning rate and weight decay (warm-up and cosine, EMA),
    6 calls of the compiled step, each member's values traced (the members
    vmapped: one copy of the network to compile; the run below loops): members 1 and 2
    (learning rate 0.01 and weight decay 1e-2; 0.05 and 1e-4: each differs from
    member 0 and from the other, so a member given another's slice or values,
    or the grid's axes swapped, fails) have the parameters, batch statistics,
    EMA and losses of their own configs stepped alone (where the values are
    constants)."""
    sweep = "learning_rate=0.01,0.05 weight_decay=1e-4,1e-2"
    config = tiny_config(image_folder, sweep=sweep, ema_decay=0.9, member_batching="vmap", **SMALL)
    members = population.from_config(config)
    assert members.size == 4 and members.swept["weight_decay"] == (1e-4, 1e-2, 1e-4, 1e-2)
    together, losses = train_steps(config, 6)
    packed = variables_of(together)
    for k in (1, 2):
        name = members.names()[k]
        alone, alone_losses = train_steps(population.member_config(config, members, k), 6)
        a = variables_of(alone)
        assert len(a) > 10
        for key, x in a.items():
            np.testing.assert_allclose(packed[key][k], x, rtol=1e-4, atol=2e-5, err_msg=f"{name} {key}")
        np.testing.assert_allclose(losses[:, k], alone_losses[:, 0], rtol=1e-5, err_msg=name)
    # The members really differ: a larger learning rate moves the parameters further.
    head = packed["['params']['head']['kernel']"]
    assert not np.allclose(head[0], head[2])


@pytest.mark.slow
def test_a_population_run_writes_each_member_and_resumes_from_sigkill_bit_identically(image_folder, tmp_path):
    """2 learning rates x 2 seeds for 8 steps, end to end: each member's folder,
    metrics, evaluation and restore; the report. The same run killed by SIGKILL
    in step 5 (checkpoint at step 4, mid-epoch), then started again, ends
    bit-identical to the uninterrupted one. (Members vmapped: one copy of the
    network to compile, where the CPU default, loop, unrolls 4; test_seeds
    steps both.)"""
    cfg = dict(num_train_steps=8, num_seeds=2, sweep="learning_rate=0.01,0.05", checkpoint_every_steps=2,
               eval_every_steps=8, ema_decay=0.9, curves_every_seconds=0.0, member_batching="vmap",
               **SMALL)  # fmt: skip
    config = tiny_config(image_folder, **cfg)
    members = population.from_config(config)
    straight = tmp_path / "straight"
    together = train_and_evaluate(config, str(straight))
    packed = leaves(Checkpointer(str(straight)).restore_tree(8))
    assert packed["['params']['head']['kernel']"].shape[0] == 4 == len(together["eval"]["per_member"])
    for k, name in enumerate(members.names()):
        member_dir = straight / name
        assert [r["step"] for r in read_metrics(str(member_dir))["train"]] == list(range(1, 9))
        assert (member_dir / "curves.png").read_bytes().startswith(b"\x89PNG")
        _, variables, info = resnet_jax.restore(str(member_dir))
        assert info["member"] == k and info["seed"] == k % 2 and info["learning_rate"] == (0.01, 0.05)[k // 2]
        np.testing.assert_array_equal(variables["params"]["head"]["kernel"], packed["['params']['head']['kernel']"][k])
    metrics = evaluate_checkpoint(tiny_config(image_folder, **SMALL), str(straight / members.names()[3]))
    assert metrics["loss"] == pytest.approx(together["eval"]["per_member"][3]["loss"], rel=1e-5)
    table = (straight / "table.md").read_text()
    assert all(name in table for name in members.names())
    assert (straight / "sweep.png").stat().st_size > 10_000
    with pytest.raises(ConfigError, match="holds 4 networks trained together: restore one with member=k"):
        resnet_jax.restore(str(straight))
    with pytest.raises(CheckpointMismatchError, match="num_seeds=2, but this run has num_seeds=3"):
        train_and_evaluate(tiny_config(image_folder, **dict(cfg, num_seeds=3)), str(straight))

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from conftest import env_with_devices, tiny_config, train_steps
        from resnet_jax.training import checkpoint
        from resnet_jax.training.loop import train_and_evaluate

        save = checkpoint.Checkpointer.save

        def save_then_kill(self, state, *args, **kwargs):
            save(self, state, *args, **kwargs)
            if int(state.step[0]) == 4:
                self.wait()
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.Checkpointer.save = save_then_kill
        train_and_evaluate(tiny_config({image_folder!r}, **{cfg!r}), sys.argv[1])
    """))
    resumed = tmp_path / "resumed"
    killed = subprocess.run([sys.executable, str(script), str(resumed)], env=env_with_devices(8), capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert Checkpointer(str(resumed)).latest_step() == 4
    train_and_evaluate(tiny_config(image_folder, **dict(cfg, curves_every_seconds=-1.0)), str(resumed))  # no curves
    b = leaves(Checkpointer(str(resumed)).restore_tree(8))
    assert packed.keys() == b.keys()
    for key in packed:
        np.testing.assert_array_equal(packed[key], b[key], err_msg=key)


def test_sweeps_that_change_shapes_or_are_malformed_are_refused(image_folder, tmp_path):
    for sweep, message in (
        ("batch_size=64,128", "'batch_size' cannot be swept in one run"),
        ("model=1,2", "'model' cannot be swept"),
        ("learning_rate=0.1,x", "not a number"),
        ("learning_rate", "is not field=value"),
        ("ema_decay=0,0.99", "ema_decay must be > 0 for every member or for none"),
    ):
        with pytest.raises(ConfigError, match=message):
            train_and_evaluate(tiny_config(image_folder, sweep=sweep, **SMALL), str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x" / "checkpoints")


def test_a_one_member_run_ends_where_the_trainer_before_the_population_axis_did(image_folder, tmp_path):
    """The one-seed fixture was trained by commit 860d72c; the same recipe trained
    now ends with the same parameters, batch statistics and momentum."""
    now = str(tmp_path / "now")
    train_and_evaluate(fixture_config(image_folder, 1), now)
    a = leaves(Checkpointer(str(FIXTURES / "one_seed")).restore_tree(6))
    b = leaves(Checkpointer(now).restore_tree(6))
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("pipeline", one_member.PIPELINES)
def test_a_one_member_population_ends_where_the_unstacked_trainer_did(image_folder, tmp_path, pipeline):
    """Every run is a population: one member, stacked on its axis of 1 with
    traced hyperparameters, ends 6 steps of warm-up, cosine, momentum, label
    smoothing and EMA with the state the trainer of commit 9be39cb (no member
    axis for one network) wrote, on the on-device and the tf.data pipelines."""
    workdir = str(tmp_path / pipeline)
    train_and_evaluate(one_member.one_member_config(image_folder, pipeline), workdir)
    now = one_member.state_leaves(workdir)
    before = np.load(one_member.OUT)
    assert len(now) > 50
    assert sorted(f"{pipeline}{k}" for k in now) == sorted(k for k in before if k.startswith(pipeline))
    # jax 0.10.2 meets the fixture exactly (0 difference; 2.4e-7 without XLA:CPU's fusion emitters, as
    # tests/conftest.py compiles). jax 0.12.1's XLA rounds the same float32 steps otherwise: 1.6e-6 at most,
    # 3.5e-6 relative, 2 elements past rtol=1e-6 (a kernel of stage 3 and its EMA; 2-core CPU, 2026-12-08).
    for key, x in now.items():
        np.testing.assert_allclose(x, before[f"{pipeline}{key}"], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("fixture,num_seeds", [("one_seed", 1), ("two_seeds", 2)])
def test_checkpoints_from_before_the_population_axis_restore_evaluate_and_resume(
    image_folder, tmp_path, fixture, num_seeds
):
    workdir = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, workdir)
    member = {} if num_seeds == 1 else {"member": 1}
    model, variables, info = resnet_jax.restore(str(workdir), **member)
    assert info["step"] == 6 and tuple(model.stage_widths) == (4, 8, 16)
    if num_seeds == 2:
        _, from_folder, folder_info = resnet_jax.restore(str(workdir / "seed1"))
        assert folder_info["seed"] == 1
        np.testing.assert_array_equal(from_folder["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    where = workdir if num_seeds == 1 else workdir / "seed1"
    metrics = evaluate_checkpoint(tiny_config(image_folder, **SMALL), str(where))
    saved = info["metrics"]
    assert metrics["top1"] == pytest.approx(saved["top1"]) and metrics["loss"] == pytest.approx(saved["loss"], 1e-5)
    config = fixture_config(image_folder, num_seeds)
    config.num_train_steps = 9
    out = str(workdir)
    train_and_evaluate(config, out)
    straight = str(tmp_path / "straight")
    train_and_evaluate(config, straight)
    a, b = leaves(Checkpointer(out).restore_tree(9)), leaves(Checkpointer(straight).restore_tree(9))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    config.sweep = "learning_rate=0.01,0.02"
    with pytest.raises(CheckpointMismatchError, match="members"):
        train_and_evaluate(config, out)


def test_checkpoints_have_their_own_cadence(image_folder, tmp_path):
    """By default an evaluation does not save; checkpoint_every_steps does, and the end always does."""
    config = tiny_config(image_folder, num_train_steps=9, eval_every_steps=2, checkpoint_on_eval=False,
                         checkpoint_every_steps=4, keep_checkpoints=10, **SMALL)  # fmt: skip
    train_and_evaluate(config, str(tmp_path / "w"))
    assert Checkpointer(str(tmp_path / "w")).all_steps() == [4, 8, 9]
    records = read_metrics(str(tmp_path / "w"))["eval"]
    assert [r["step"] for r in records] == [2, 4, 6, 8, 9]


def test_several_steps_per_call_train_as_one_step_per_call(image_folder, tmp_path):
    """steps_per_call=3 (a lax.scan of 3 steps a call) ends where one step a
    call does, with the same training records; cadences it cannot meet are refused."""
    config = tiny_config(image_folder, num_train_steps=6, batch_size=8, log_every_steps=3, eval_every_steps=6,
                         **SMALL)  # fmt: skip
    train_and_evaluate(config, str(tmp_path / "one"))
    config.steps_per_call = 3
    train_and_evaluate(config, str(tmp_path / "three"))
    a, b = (leaves(Checkpointer(str(tmp_path / w)).restore_tree()) for w in ("one", "three"))
    assert int(a["['step']"]) == int(b["['step']"]) == 6
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    one, three = (read_metrics(str(tmp_path / w))["train"] for w in ("one", "three"))
    assert [r["step"] for r in three] == [r["step"] for r in one] == [3, 6]
    np.testing.assert_allclose([r["loss"] for r in three], [r["loss"] for r in one], rtol=1e-5)
    config.steps_per_call, config.log_every_steps, config.eval_every_steps, config.num_train_steps = 4, 4, 8, 8
    with pytest.raises(ConfigError, match=r"steps_per_call=4 must be >= 1 and divide steps per epoch \(6\)"):
        train_and_evaluate(config, str(tmp_path / "four"))
