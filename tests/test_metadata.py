"""Checkpoint metadata: one versioned schema (`resnet_jax.training.metadata`).
Checkpoints written before the schema had a version (the fixtures of commit
860d72c) read as the current one; a later version is refused, not misread."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from fixtures.make_checkpoints import HERE as FIXTURES

import resnet_jax
from resnet_jax.errors import CheckpointMismatchError, CheckpointVersionError, UserError
from resnet_jax.restore import read_metadata
from resnet_jax.training.checkpoint import Checkpointer, restore_newest
from resnet_jax.training.metadata import (
    SCHEMA_VERSION,
    check_resumable,
    run_metadata,
    upgrade,
    upgrade_config,
    weights_metadata,
)


def raw_metadata(fixture):
    """A fixture's metadata as its file holds it (schema 1: no version)."""
    [step] = os.listdir(FIXTURES / fixture / "checkpoints")
    with open(FIXTURES / fixture / "checkpoints" / step / "metadata" / "metadata") as f:
        return json.load(f)


@pytest.mark.parametrize("fixture,size", [("one_seed", 1), ("two_seeds", 2)])
def test_the_fixtures_metadata_reads_as_the_current_schema(fixture, size):
    raw = raw_metadata(fixture)
    assert "schema" not in raw and "num_members" not in raw and "members" not in raw
    info = read_metadata(str(FIXTURES / fixture))
    assert info["schema"] == SCHEMA_VERSION == 2
    assert info["num_members"] == info["num_seeds"] == size and info["seeds"] == list(range(size))
    assert info["members"] == [{"seed": k} for k in range(size)]
    assert info["member_names"] == ([] if size == 1 else ["seed0", "seed1"])
    assert info["step"] == 6 and info["model"] == raw["model"] and info["class_names"] == raw["class_names"]
    assert info["crop_fraction"] == raw["config"]["data"]["crop_fraction"] and info["centre_crop"] is False
    assert info["source"] is None and info["batch_size"] == raw["batch_size"] == 16
    assert info["config"]["member_batching"] == raw["config"]["seed_batching"]
    assert "seed_batching" not in info["config"]
    if size == 1:
        assert info["metrics"] == raw["metrics"]
    else:
        assert "per_seed" not in info["metrics"]
        assert [m["top1"] for m in info["metrics"]["per_member"]] == [m["top1"] for m in raw["metrics"]["per_seed"]]
        assert info["metrics"]["top1"] == raw["metrics"]["top1"]
    assert "schema" not in raw_metadata(fixture)  # reading rewrites nothing


def test_a_member_of_the_two_seed_fixture_restores_with_its_own_metrics():
    raw = raw_metadata("two_seeds")
    for k in range(2):
        _, _, info = resnet_jax.restore(str(FIXTURES / "two_seeds" / f"seed{k}"))
        assert info["member"] == k and info["seed"] == k
        assert info["metrics"]["top1"] == raw["metrics"]["per_seed"][k]["top1"]


def test_a_new_run_writes_the_current_schema_and_reads_it_back_unchanged(image_folder):
    population = {"num_seeds": 2, "sweep": "learning_rate=0.1,0.2", "data.pipeline": "device"}
    config = tiny_config(image_folder, **population)
    written = run_metadata(config, ["a", "b", "c"], 48)
    assert written["schema"] == SCHEMA_VERSION
    assert written["num_members"] == 4 and written["member_names"][0] == "learning_rate=0.1_seed0"
    assert written["members"][3] == {"learning_rate": 0.2, "seed": 1}
    assert written["crop_fraction"] == config.data.crop_fraction and written["source"] is None
    read = upgrade(json.loads(json.dumps(written)))
    assert {k: v for k, v in read.items() if k != "config"} == {k: v for k, v in written.items() if k != "config"}
    check_resumable(read, written, "w")
    other_seeds = run_metadata(tiny_config(image_folder, seed=5, **population), ["a", "b", "c"], 48)
    with pytest.raises(CheckpointMismatchError, match=r"trained with seeds=\[0, 1\], but this run has seeds=\[5, 6\]"):
        check_resumable(read, other_seeds, "w")


def test_converted_weights_name_their_preprocessing_and_are_not_resumed():
    info = upgrade(weights_metadata("resnet18", ["x", "y"], 224, (0.5,) * 3, (0.5,) * 3, 0.9, "timm resnet18.a1"))
    assert info["schema"] == SCHEMA_VERSION and info["config"] is None and info["num_members"] == 1
    assert info["num_classes"] == 2 and info["image_size"] == 224 and info["crop_fraction"] == 0.9
    assert info["centre_crop"] is True and info["mean"] == [0.5] * 3 and info["model_kwargs"] == {}
    with pytest.raises(CheckpointMismatchError, match="holds converted weights \\(timm resnet18.a1\\)"):
        check_resumable(info, info, "out/checkpoints")


def test_schema_1_conversions_and_checkpoints_older_than_seeds_upgrade():
    """A conversion of schema 1 faked a training config; a checkpoint from before
    seeds were trained together has no population fields, and is not checked on them."""
    data = {"augment": "inception", "crop_fraction": 0.9, "mean": [0.5] * 3, "std": [0.5] * 3}
    old_conversion = {"model": "resnet18", "num_classes": 2, "class_names": ["x", "y"], "image_size": 224,
                      "mean": [0.5] * 3, "std": [0.5] * 3, "config": {"seed": 0, "data": data},
                      "source": "torchvision resnet18", "num_seeds": 1, "seeds": [0]}  # fmt: skip
    info = upgrade(old_conversion)
    assert info["centre_crop"] is True and info["crop_fraction"] == 0.9 and info["config"] is None
    assert info["num_members"] == 1 and info["half_precision"] is False and info["model_kwargs"] == {}
    before_seeds = {"model": "resnet18", "num_classes": 2, "class_names": ["x", "y"], "image_size": 32,
                    "mean": [0.5] * 3, "std": [0.5] * 3, "config": {"data": {"augment": "cifar"}}}  # fmt: skip
    info = upgrade(before_seeds)
    assert info["num_members"] == info["num_seeds"] == 1 and info["member_names"] == []
    assert info["seeds"] is info["members"] is info["batch_size"] is None
    assert info["crop_fraction"] == 0.875 and info["centre_crop"] is False and info["config"]["num_seeds"] == 1
    current = {**info, "seeds": [3], "members": [{"seed": 3}], "batch_size": 64}
    check_resumable(info, current, "w")
    assert upgrade_config({"seed_batching": "loop"}) == {"member_batching": "loop", "num_seeds": 1}


class _State(dict):
    """A saved state as a dict, with the `.step` that `Checkpointer.save` reads."""

    @property
    def step(self):
        return self["step"]


def test_metadata_of_a_later_schema_is_refused_in_one_line(tmp_path):
    workdir = str(tmp_path / "later")
    raw = {**raw_metadata("one_seed"), "schema": SCHEMA_VERSION + 1}
    state = _State(step=np.asarray(6, np.int32), params={"w": np.ones(3, np.float32)})
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(state, raw)
    ckpt.close()
    for read in (lambda: resnet_jax.restore(workdir), lambda: read_metadata(workdir, "best")):
        with pytest.raises(CheckpointVersionError) as error:
            read()
        assert isinstance(error.value, UserError) and "\n" not in str(error.value)
        assert str(error.value) == (
            f"checkpoint {workdir}/checkpoints/6 has metadata of schema 3, and this version of resnet_jax reads "
            "schemas 1 to 2: read it with the newer resnet_jax that wrote it"
        )
    ckpt = Checkpointer(workdir, async_save=False)
    with pytest.raises(CheckpointVersionError):
        restore_newest(ckpt, state, lambda saved: None)  # a run resuming here stops: nothing is set aside
    ckpt.close()
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["6"] and os.listdir(tmp_path) == ["later"]
