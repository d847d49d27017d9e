"""`check`: every error a training config can hold on its own, raised before any work.

`train_and_evaluate` calls `check` first, before it reads data, builds a state
or touches a checkpoint; the rest of the trainer trusts what it checked. Each
rule stays with the code it protects (the model registry and `ResNet` own the
model's, `data.check` the pipeline's, `augment.batch.check` the in-step
augmentations', `population.from_config` the sweep's, `optim` the schedule's
and optimiser's names, `parallel` the batch's split over the devices); this
module calls them in one place and owns only the rules that belong to no other
module: the floors of values (a negative learning rate, batch or cadence), a
run of no steps, the loss's name and ``steps_per_call``'s cadences. What only the data
can tell (steps per epoch, a batch larger than the training split) is checked
once the data is known (`steps_per_call` again, with the data's cadences).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections

from resnet_jax import batch_layout, data, models, parallel
from resnet_jax.augment import batch as batch_augment
from resnet_jax.errors import ConfigError
from resnet_jax.training import compiled, optim, population, steps

RENAMED = {"seed_batching": "member_batching"}  # old field -> its name now
# Fields whose value has a floor, checked first (a negative batch is not "a batch that does not divide").
AT_LEAST_1 = ("batch_size", "eval_batch_size", "log_every_steps", "eval_every_epochs", "ema_every_steps",
              "keep_checkpoints", "lr_reference_batch", "data.image_size")  # fmt: skip
LEARNING_RATES = ("learning_rate", "warmup_constant_lr", "lr_end")
LR_FACTORS = ("lr_decay_factor", "warmup_start_factor", "backbone_lr_multiplier")
AT_LEAST_0 = ("weight_decay", "momentum", "warmup_epochs", "warmup_constant_steps", "max_grad_norm", "label_smoothing",
              "ema_decay", "max_train_loss", "eval_every_steps", "checkpoint_every_steps", "checkpoint_every_minutes",
              "mixup_chunk", "data.crop_padding", "data.shuffle_buffer", "data.prefetch")  # fmt: skip


def check(config: ml_collections.ConfigDict) -> None:
    """Raises the `ConfigError` (one line naming the field) of the first field of
    `config` that cannot work; returns None when every one can.

    Checked: the values with a floor (sizes, cadences and counts positive,
    learning rates and their factors not negative), the batch's split over the devices and processes, its layout
    (`batch_layout.from_config`: source devices, micro-batches over the devices), the run's length,
    the model's name and options, the population (sweep, seeds, member
    batching, ``init_from``), the loss, learning-rate schedule and optimiser
    names, the in-step augmentations, the input pipeline and its options, and
    ``steps_per_call`` against the config's own cadences.
    """
    config = config.copy_and_resolve_references()
    for old, new in RENAMED.items():
        if old in config:
            raise ConfigError(f"{old} is now called {new}: set {new}={config[old]!r}")
    for name in (*AT_LEAST_1, *LEARNING_RATES, *LR_FACTORS, *AT_LEAST_0):
        check_value(name, _field(config, name))
    parallel.check_batch_size(config.batch_size, parallel.make_mesh())
    layout = batch_layout.from_config(config, jax.process_count())  # source devices, micro-batches, BN groups
    compiled.check_micro_batches(config.batch_size, layout.micro_batches, jax.device_count())
    if config.num_train_steps <= 0 and config.num_epochs < 1:
        raise ConfigError(f"num_epochs={config.num_epochs} makes a run of no steps: train at least one epoch, "
                          "or set num_train_steps")  # fmt: skip
    models.create(config.model, **config.model_kwargs.to_dict())
    members = population.from_config(config)
    for name, values in members.swept.items():
        for value in values:
            check_value(name, value, "sweep: ")
    if config.loss not in steps.LOSSES:
        raise ConfigError(f"unknown loss {config.loss!r}; use {' or '.join(steps.LOSSES)}")
    optim.make_optimizer(config, optim.learning_rate_schedule(config, 1, 1))
    batch_augment.check(config, members.swept)
    data.check(config)
    steps_per_call(config)


def check_value(name: str, value: object, where: str = "") -> None:
    """Raises the `ConfigError` of a value of `name` below its floor (`AT_LEAST_1`,
    `LEARNING_RATES`, `LR_FACTORS`, `AT_LEAST_0`; other fields pass), the reason
    named; `where` prefixes the message (the sweep's values)."""
    if not isinstance(value, (int, float)):
        return
    if name in AT_LEAST_1 and value < 1:
        raise ConfigError(f"{where}{name}={value} must be positive")
    if value >= 0:
        return
    if name in LEARNING_RATES:
        raise ConfigError(f"{where}{name}={value}: a learning rate must not be negative (each step would climb the "
                          "loss)")  # fmt: skip
    if name in LR_FACTORS:
        raise ConfigError(f"{where}{name}={value} must not be negative: it multiplies the learning rate")
    if name in AT_LEAST_0:
        raise ConfigError(f"{where}{name}={value} must not be negative")


def _field(config: ml_collections.ConfigDict, name: str) -> object:
    """``config.a.b`` for ``name="a.b"``; None for a field the config lacks."""
    for part in name.split("."):
        config = config.get(part) if isinstance(config, ml_collections.ConfigDict) else None
    return config


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
