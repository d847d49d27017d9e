"""Seeds trained together (config.num_seeds): each seed is its own run, in one compiled step."""

import jax
import numpy as np
import pytest
from conftest import tiny_config, train_steps
from flax import serialization

from resnet_jax.errors import ConfigError
from resnet_jax.training.loop import train_and_evaluate

# lr 0.01: at the fixture's 0.05 the first steps amplify float rounding (1e-7 after step 1, 5e-5 after step 2).
# A narrow ResNet-8 (one block a stage, 4-8-16 filters) compiles in a fraction of ResNet-20's time.
DEVICE = {"data.pipeline": "device", "ema_decay": 0.9, "learning_rate": 0.01, "lr_schedule": "piecewise",
          "lr_boundaries": (3,), "model_kwargs.stage_sizes": (1, 1, 1),
          "model_kwargs.stage_widths": (4, 8, 16)}  # fmt: skip


def leaves(state):
    tree = serialization.to_state_dict(state)
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
@pytest.mark.parametrize("member_batching", ["vmap", "loop"])
def test_seeds_stepped_together_equal_each_seed_stepped_alone(image_folder, member_batching):
    """2 seeds for 4 calls of the compiled step (across an epoch boundary: each
    draws its own batches) == seed 0 and seed 1 each stepped on its own:
    parameters, batch statistics, their EMA and each step's loss. (The vmapped
    convolutions sum in another order: parameters differ by 5e-6.)"""
    together, losses = train_steps(tiny_config(image_folder, num_seeds=2, **DEVICE), 4, member_batching)
    assert losses.shape == (4, 2) and not np.allclose(losses[:, 0], losses[:, 1])
    groups = {"['params'", "['batch_stats'", "['ema_params'", "['ema_batch_stats'"}
    for k in range(2):
        alone, alone_losses = train_steps(tiny_config(image_folder, seed=k, **DEVICE), 4)
        a, b = leaves(alone), leaves(jax.tree_util.tree_map(lambda x, k=k: x[k], together))
        assert a.keys() == b.keys() and int(a["['step']"]) == int(b["['step']"]) == 4
        # A one-member run holds one network's arrays between steps (no member axis: population.stored).
        assert all(a[key].shape == b[key].shape for key in a)
        variables = [key for key in a if key.split("]")[0] in groups]
        assert {key.split("]")[0] for key in variables} == groups
        for key in variables:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=5e-5, err_msg=key)
        np.testing.assert_allclose(losses[:, k], alone_losses[:, 0], rtol=1e-5)


def test_seeds_need_the_device_pipeline_and_their_own_initialisation(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="needs data.pipeline='device'"):
        train_and_evaluate(tiny_config(image_folder, num_seeds=2), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="unknown member_batching 'pmap'"):
        config = tiny_config(image_folder, num_seeds=2, member_batching="pmap", **DEVICE)
        train_and_evaluate(config, str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="init_from needs num_seeds=1"):
        train_and_evaluate(tiny_config(image_folder, num_seeds=2, init_from="x", **DEVICE), str(tmp_path / "b"))
