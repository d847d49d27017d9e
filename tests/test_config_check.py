"""Every error a config alone can hold ends `train_and_evaluate` before any work:
no data read, no state built, no checkpoint touched, not even the workdir made
(`resnet_jax.training.config_check`)."""

import glob
import importlib.util
import os
import re

import pytest
from conftest import ROOT, tiny_config

from resnet_jax.errors import ConfigError, ConfigTypeError
from resnet_jax.training import config_check, loop

# (overrides of the tiny config, the error's message): the errors of README, docs/ and every
# `raise ConfigError` of the trainer that the config alone decides.
ERRORS = [
    (dict(model="resnet_nope"), "unknown model 'resnet_nope'"),
    ({"model_kwargs.shortcut": "Z"}, "shortcut must be one of ('A', 'B', 'C', None), got 'Z'"),
    ({"model_kwargs.stem": "tiny"}, "stem must be one of"),
    ({"model_kwargs.drop_path_rate": 1.5}, "drop_path_rate must be in [0, 1], got 1.5"),
    (dict(model="cifar_plain20", **{"model_kwargs.drop_path_rate": 0.1}), "a plain network (shortcut=None)"),
    ({"model_kwargs.no_such_option": 1}, "bad override for model 'cifar_resnet20'"),
    (dict(batch_size=12), "batch_size=12 does not divide over 8 devices"),
    (dict(batch_size=-8), "batch_size=-8 must be positive"),
    (dict(eval_batch_size=0), "eval_batch_size=0 must be positive"),
    ({"data.image_size": -4}, "data.image_size=-4 must be positive"),
    (dict(log_every_steps=0), "log_every_steps=0 must be positive"),
    (dict(learning_rate=-0.1), "learning_rate=-0.1: a learning rate must not be negative"),
    (dict(warmup_constant_lr=-0.01, warmup_constant_steps=5), "warmup_constant_lr=-0.01: a learning rate must not"),
    (dict(lr_end=-1e-5), "lr_end=-1e-05: a learning rate must not be negative"),
    (dict(backbone_lr_multiplier=-1.0), "backbone_lr_multiplier=-1.0 must not be negative: it multiplies the"),
    (dict(sweep="learning_rate=0.1,-0.1", **{"data.pipeline": "device"}), "sweep: learning_rate=-0.1: a learning"),
    (dict(checkpoint_every_steps=-2), "checkpoint_every_steps=-2 must not be negative"),
    (dict(num_epochs=0), "num_epochs=0 makes a run of no steps"),
    (dict(loss="mse"), "unknown loss 'mse'; use ce or bce"),
    (dict(lr_schedule="step"), "unknown lr_schedule 'step'"),
    (dict(optimizer="adam"), "unknown optimizer 'adam'"),
    (dict(sweep="batch_size=64,128"), "'batch_size' cannot be swept in one run"),
    (dict(sweep="learning_rate=0.1,x"), "has a value that is not a number"),
    (dict(sweep="learning_rate"), "is not field=value"),
    (dict(sweep="learning_rate=0.1 learning_rate=0.2"), "'learning_rate' is given twice"),
    (dict(sweep="ema_decay=0,0.99"), "ema_decay must be > 0 for every member or for none"),
    (dict(num_seeds=0), "num_seeds must be at least 1, got 0"),
    (dict(num_seeds=2), "num_seeds=2 trains the seeds in one step, which needs data.pipeline='device'"),
    (dict(member_batching="pmap"), "unknown member_batching 'pmap'"),
    (dict(seed_batching="loop"), "seed_batching is now called member_batching: set member_batching='loop'"),
    (dict(num_seeds=2, init_from="/nowhere", **{"data.pipeline": "device"}), "init_from needs num_seeds=1"),
    (dict(auto_augment="auto"), "unknown auto_augment 'auto'"),
    (dict(auto_augment_interpolation="bicubic"), "unknown auto_augment_interpolation 'bicubic'"),
    (dict(mixup_style="fastai"), "unknown mixup_style 'fastai'"),
    (dict(mixup_alpha=0.2, mixup_chunk=5), "mixup_chunk=5 must divide batch_size=16"),
    (dict(sweep="cutmix_alpha=0,1", mixup_chunk=5), "mixup_chunk=5 must divide batch_size=16"),
    ({"data.pipeline": "torch"}, "unknown data.pipeline 'torch'"),
    ({"data.augment": "autoaugment"}, "unknown data.augment 'autoaugment'"),
    ({"data.interpolation": "nearest"}, "data.interpolation='nearest'"),
    ({"data.progressive_resizing": "160:192"}, "expected 'min:max:start_ramp:end_ramp'"),
    ({"data.progressive_resizing": "192:160:1:2", "data.augment": "inception"}, "needs 0 < min <= max"),
    ({"data.train_image_size": -1}, "data.train_image_size=-1: use a size in pixels"),
    ({"data.train_image_size": 24}, "they need data.augment='inception' (not 'cifar')"),
    ({"data.repeated_augmentations": 0}, "data.repeated_augmentations=0: use a whole number"),
    (dict(steps_per_call=2), "steps_per_call=2 needs data.pipeline='device'"),
    (dict(steps_per_call=0, **{"data.pipeline": "device"}), "steps_per_call=0 must be >= 1"),
    (dict(steps_per_call=2, **{"data.pipeline": "device"}), "divide log_every_steps (1)"),
    (dict(steps_per_call=2, num_train_steps=3, log_every_steps=2, **{"data.pipeline": "device"}),
     "divide num_train_steps (3)"),
]


class Reached(Exception):
    """Raised by a stand-in for the work that follows the check."""


@pytest.fixture
def no_work(monkeypatch):
    """Replaces what reads data, builds the state or touches a checkpoint in the
    loop by stand-ins that record their call and stop there; yields the record."""
    called = []

    def stand_in(name):
        def work(*args, **kwargs):
            called.append(name)
            raise Reached(name)

        return work

    for name in ("make_pipeline", "use_pretrained_normalization", "create_train_state", "Checkpointer"):
        monkeypatch.setattr(loop, name, stand_in(name))
    return called


def test_a_good_config_passes_and_the_run_goes_on_to_the_stand_ins(no_work, tmp_path):
    config = tiny_config(str(tmp_path / "images"))
    config_check.check(config)
    with pytest.raises(Reached):
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    assert no_work and (tmp_path / "w").is_dir()  # the stand-ins do catch the work, after the lock made the workdir


@pytest.mark.parametrize("overrides, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_each_config_error_comes_before_any_work(no_work, tmp_path, overrides, message):
    config = tiny_config(str(tmp_path / "images"), **overrides)
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    assert "\n" not in str(raised.value)
    assert no_work == [] and not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_check.check(config)


def test_an_unknown_model_option_is_a_type_error_too(tmp_path):
    with pytest.raises(ConfigTypeError):
        config_check.check(tiny_config(str(tmp_path), **{"model_kwargs.no_such_option": 1}))


def test_the_check_leaves_the_config_as_it_was(tmp_path):
    config = tiny_config(str(tmp_path), sweep="learning_rate=0.1,0.2", **{"data.pipeline": "device"})
    before = config.to_json()
    config_check.check(config)
    assert config.to_json() == before


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))), ids=os.path.basename)
def test_every_shipped_config_passes(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_check.check(module.get_config())
