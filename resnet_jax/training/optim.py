"""Learning-rate schedules and the SGD optimiser of the ResNet papers."""

from __future__ import annotations

import jax
import ml_collections
import optax

from resnet_jax.errors import ConfigError


def base_learning_rate(cfg: ml_collections.ConfigDict) -> float:
    """``learning_rate``, scaled by ``batch_size / lr_reference_batch`` when
    `lr_linear_scaling` is on (Goyal et al. 2017)."""
    lr = cfg.learning_rate
    if cfg.lr_linear_scaling:
        lr *= cfg.batch_size / cfg.lr_reference_batch
    return lr


def learning_rate_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The configured schedule, as a function of the step.

    ``lr_schedule``:
      * "piecewise": the paper's; multiply by ``lr_decay_factor`` at each of
        ``lr_boundaries`` (in steps; or epochs if ``lr_boundaries_in_epochs``).
      * "cosine": linear warmup over ``warmup_epochs`` from 0, then cosine to 0.
      * "onecycle": linear up over ``warmup_epochs`` from lr/25, linear down to 0.
      * "constant".
    ``warmup_constant_steps`` > 0 first holds ``warmup_constant_lr`` that many
    steps (the paper's ResNet-110 warm-up at 0.01).
    """
    lr = base_learning_rate(cfg)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.lr_schedule == "piecewise":
        scale = steps_per_epoch if cfg.lr_boundaries_in_epochs else 1
        boundaries = {int(b * scale): cfg.lr_decay_factor for b in cfg.lr_boundaries}
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    elif cfg.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), 0.0)
    elif cfg.lr_schedule == "onecycle":
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / 25, lr, warmup), optax.linear_schedule(lr, 0.0, total_steps - warmup)],
            [warmup],
        )
    elif cfg.lr_schedule == "constant":
        schedule = optax.constant_schedule(lr)
    else:
        raise ConfigError(f"unknown lr_schedule {cfg.lr_schedule!r}; use piecewise, cosine, onecycle or constant")
    if cfg.warmup_constant_steps > 0:
        n = cfg.warmup_constant_steps
        schedule = optax.join_schedules([optax.constant_schedule(cfg.warmup_constant_lr), schedule], [n])
    return schedule


def decay_mask(params: optax.Params, exclude_bn_and_bias: bool) -> optax.Params:
    """True for parameters that take weight decay; 1-D ones (BN scales and
    biases, dense biases) are excluded when asked."""
    return jax.tree_util.tree_map(lambda p: not (exclude_bn_and_bias and p.ndim == 1), params)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum and weight decay coupled as in PyTorch's SGD and the
    paper: the decay is added to the gradient before momentum.

    For fine-tuning, everything but the ``head`` (the backbone) can learn at
    ``backbone_lr_multiplier`` times the rate, or not at all with
    ``freeze_backbone``.
    """
    sgd = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.weight_decay_exclude_bn_bias)),
        optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
    )
    if not cfg.freeze_backbone and cfg.backbone_lr_multiplier == 1.0:
        return sgd
    backbone = optax.set_to_zero() if cfg.freeze_backbone else optax.chain(sgd, optax.scale(cfg.backbone_lr_multiplier))
    return optax.multi_transform({"head": sgd, "backbone": backbone}, _head_or_backbone)


def _head_or_backbone(params: optax.Params) -> optax.Params:
    """Labels every parameter "head" or "backbone" (all top-level modules but ``head``)."""
    labels = {}
    for name, subtree in params.items():
        label = "head" if name == "head" else "backbone"
        labels[name] = jax.tree_util.tree_map(lambda _, label=label: label, subtree)
    return labels
