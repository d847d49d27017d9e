"""`check`: every error a training config can hold on its own, raised before any work.

`train_and_evaluate` calls `check` first, before it reads data, builds a state
or touches a checkpoint; the rest of the trainer trusts what it checked. Each
rule stays with the code it protects (the model registry and `ResNet` own the
model's, `data.check` the pipeline's, `augment.batch.check` the in-step
augmentations', `population.from_config` the sweep's, `optim` the schedule's
and optimiser's names, `parallel` the batch's split over the devices); this
module calls them in one place and owns only the rules that belong to no other
module: a run of no steps, the loss's name and ``steps_per_call``'s cadences. What only the data
can tell (steps per epoch, a batch larger than the training split) is checked
once the data is known (`steps_per_call` again, with the data's cadences).
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from resnet_jax import data, models, parallel
from resnet_jax.augment import batch as batch_augment
from resnet_jax.errors import ConfigError
from resnet_jax.training import optim, population, steps

RENAMED = {"seed_batching": "member_batching"}  # old field -> its name now


def check(config: ml_collections.ConfigDict) -> None:
    """Raises the `ConfigError` (one line naming the field) of the first field of
    `config` that cannot work; returns None when every one can.

    Checked: the batch's split over the devices and processes, the run's length,
    the model's name and options, the population (sweep, seeds, member
    batching, ``init_from``), the loss, learning-rate schedule and optimiser
    names, the in-step augmentations, the input pipeline and its options, and
    ``steps_per_call`` against the config's own cadences.
    """
    config = config.copy_and_resolve_references()
    for old, new in RENAMED.items():
        if old in config:
            raise ConfigError(f"{old} is now called {new}: set {new}={config[old]!r}")
    parallel.check_batch_size(config.batch_size, parallel.make_mesh())
    if config.num_train_steps <= 0 and config.num_epochs < 1:
        raise ConfigError(f"num_epochs={config.num_epochs} makes a run of no steps: train at least one epoch, "
                          "or set num_train_steps")  # fmt: skip
    models.create(config.model, **config.model_kwargs.to_dict())
    members = population.from_config(config)
    if config.loss not in steps.LOSSES:
        raise ConfigError(f"unknown loss {config.loss!r}; use {' or '.join(steps.LOSSES)}")
    optim.make_optimizer(config, optim.learning_rate_schedule(config, 1, 1))
    batch_augment.check(config, members.swept)
    data.check(config)
    steps_per_call(config)


def steps_per_call(config: ml_collections.ConfigDict, known: Mapping[str, int] | None = None) -> int:
    """``config.steps_per_call``, refused where the loop could not stop where it
    must: it needs the on-device pipeline and must divide every step cadence,
    those of the config and those in `known` (name -> value: the steps per
    epoch and the step resumed at, known once the data and the state are)."""
    n = int(config.steps_per_call)
    if n == 1:
        return n
    if config.data.pipeline != "device":
        raise ConfigError(f"steps_per_call={n} needs data.pipeline='device' (the steps of a call make their batches)")
    cadences = {"num_train_steps": max(config.num_train_steps, 0), "log_every_steps": config.log_every_steps,
                "eval_every_steps": config.eval_every_steps, "checkpoint_every_steps": config.checkpoint_every_steps,
                **(known or {})}  # fmt: skip
    for name, value in cadences.items():
        if n < 1 or value % n:
            raise ConfigError(f"steps_per_call={n} must be >= 1 and divide {name} ({value})")
    return n
