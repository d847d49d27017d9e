"""Learning-rate schedules and optimisers: the ResNet papers' SGD, and LARS
and LAMB of today's large-batch recipes.

Every per-run scalar (peak learning rate, warm-up, weight decay, momentum) can
come from `hp`, a dict of per-member values of a population
(`resnet_jax.training.population`) that may be traced inside the step; what
is not in `hp` comes from the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax.errors import ConfigError

SCHEDULES = ("piecewise", "cosine", "onecycle", "polynomial", "constant")
OPTIMIZERS = ("sgd", "lars", "lamb")


def base_learning_rate(cfg: ml_collections.ConfigDict, hp: Mapping[str, Any] | None = None) -> Any:
    """The peak learning rate (``hp`` or ``cfg.learning_rate``), scaled by
    ``batch_size / lr_reference_batch`` when `lr_linear_scaling` is on (Goyal et al. 2017)."""
    lr = (hp or {}).get("learning_rate", cfg.learning_rate)
    if cfg.lr_linear_scaling:
        lr = lr * cfg.batch_size / cfg.lr_reference_batch
    return lr


def learning_rate_schedule(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int, hp: Mapping[str, Any] | None = None
) -> Callable[[Any], Any]:
    """The configured schedule, as a function of the step. It computes with NumPy
    when the step and `hp` are host numbers (the log's learning rate costs no
    device call) and with `jax.numpy` when either is traced (inside the step).

    ``lr_schedule``:
      * "piecewise": the paper's; multiply by ``lr_decay_factor`` at each of
        ``lr_boundaries`` (in steps; or epochs if ``lr_boundaries_in_epochs``).
      * "cosine": linear warm-up over ``warmup_epochs``, then cosine from lr to ``lr_end``.
      * "onecycle": linear warm-up over ``warmup_epochs``, then linear down to 0 (FFCV's "cyclic").
      * "polynomial": linear warm-up, then ``(lr - lr_end) * (1 - t / T)
        ** lr_power + lr_end`` over the remaining T steps (MLPerf's LARS recipe).
      * "constant".
    Every warm-up starts at ``warmup_start_factor`` x lr (torchvision's
    ``--lr-warmup-decay``; FFCV's 1e-4). With ``lr_step_every_epoch`` the rate
    changes at the start of each epoch only, held through it (PyTorch schedulers
    stepped once an epoch: torchvision's and timm's recipes).
    ``warmup_constant_steps`` > 0 first holds ``warmup_constant_lr`` that many
    steps, and the schedule starts after them (the paper's ResNet-110 warm-up at 0.01).
    """
    if cfg.lr_schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr_schedule {cfg.lr_schedule!r}; use {', '.join(SCHEDULES)}")
    hp = dict(hp or {})

    def schedule(step: Any) -> Any:
        on_host = all(isinstance(v, (int, float, np.number, np.ndarray)) for v in (step, *hp.values()))
        xp = np if on_host else jnp
        lr = base_learning_rate(cfg, hp)
        warmup = xp.round(hp.get("warmup_epochs", cfg.warmup_epochs) * steps_per_epoch)
        n = cfg.warmup_constant_steps
        t = xp.asarray(step, xp.float32) - n
        if cfg.lr_step_every_epoch:
            t = xp.floor(t / steps_per_epoch) * steps_per_epoch
        value = _schedule(cfg, xp, t, lr, warmup, steps_per_epoch, total_steps)
        return xp.where(t < 0, cfg.warmup_constant_lr, value) if n > 0 else value

    return schedule


def _schedule(cfg: ml_collections.ConfigDict, xp: Any, t: Any, lr: Any, warmup: Any, spe: int, total: int) -> Any:
    """The schedule's value at step `t` (warm-up of `warmup` steps, `total` steps in all)."""
    if cfg.lr_schedule == "piecewise":
        scale = spe if cfg.lr_boundaries_in_epochs else 1
        value = lr
        for b in sorted(int(b * scale) for b in cfg.lr_boundaries):
            value = xp.where(t >= b, value * cfg.lr_decay_factor, value)
        return value
    if cfg.lr_schedule == "constant":
        return lr + 0 * t
    start = lr * cfg.warmup_start_factor
    ramp = start + (lr - start) * xp.clip(t / xp.maximum(warmup, 1), 0, 1)
    progress = xp.clip((t - warmup) / xp.maximum(total - warmup, 1), 0, 1)
    if cfg.lr_schedule == "onecycle":
        decay = lr * (1 - progress)
    elif cfg.lr_schedule == "cosine":
        decay = cfg.lr_end + (lr - cfg.lr_end) * 0.5 * (1 + xp.cos(math.pi * progress))
    else:  # polynomial
        decay = (lr - cfg.lr_end) * (1 - progress) ** cfg.lr_power + cfg.lr_end
    return xp.where(t < warmup, ramp, decay)


def decay_mask(params: optax.Params, exclude_bn_and_bias: bool) -> optax.Params:
    """True for parameters that take weight decay; 1-D ones (BN scales and
    biases, dense biases) are excluded when asked."""
    return jax.tree_util.tree_map(lambda p: not (exclude_bn_and_bias and p.ndim == 1), params)


def make_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule, hp: Mapping[str, Any] | None = None
) -> optax.GradientTransformation:
    """The optimiser ``cfg.optimizer`` names:

    * "sgd": momentum SGD with weight decay coupled as in PyTorch's SGD and the
      paper (added to the gradient before momentum);
    * "lars": LARS as MLPerf's reference computes it (`lars`), weight decay
      and the trust ratio on the parameters that `decay_mask` selects;
    * "lamb": optax's LAMB (You et al. 2019; timm's "ResNet strikes back"),
      decoupled weight decay and the trust ratio on the same parameters (timm's
      `Lamb` adapts only where it decays: ``always_adapt=False``).

    ``max_grad_norm`` > 0 first scales the gradients down to that global norm
    when they exceed it (timm's `Lamb` does with 1.0 by default).

    ``weight_decay_exclude_bn_bias`` leaves batch-norm and bias parameters out
    of the decay (and, for LARS and LAMB, of the trust ratio). For fine-tuning,
    everything but the ``head`` (the backbone) can learn at
    ``backbone_lr_multiplier`` times the rate, or not at all with ``freeze_backbone``.
    """
    hp = hp or {}
    wd, momentum = hp.get("weight_decay", cfg.weight_decay), hp.get("momentum", cfg.momentum)
    # A swept momentum is always a trace (one state structure for every member); else 0 means none.
    momentum = momentum if "momentum" in hp or cfg.momentum else None
    mask = lambda p: decay_mask(p, cfg.weight_decay_exclude_bn_bias)  # noqa: E731
    if cfg.optimizer == "sgd":
        tx = optax.chain(optax.add_decayed_weights(wd, mask=mask), optax.sgd(schedule, momentum, cfg.nesterov))
    elif cfg.optimizer == "lars":
        tx = lars(schedule, wd, mask, cfg.lars_trust_coefficient, cfg.lars_eps, momentum or 0.0, cfg.nesterov)
    elif cfg.optimizer == "lamb":  # optax.lamb's chain, its trust ratio masked as its decay
        tx = optax.chain(
            optax.scale_by_adam(cfg.lamb_b1, cfg.lamb_b2, cfg.lamb_eps),
            optax.add_decayed_weights(wd, mask),
            optax.masked(optax.scale_by_trust_ratio(), mask),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use {', '.join(OPTIMIZERS)}")
    if cfg.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
    if not cfg.freeze_backbone and cfg.backbone_lr_multiplier == 1.0:
        return tx
    backbone = optax.set_to_zero() if cfg.freeze_backbone else optax.chain(tx, optax.scale(cfg.backbone_lr_multiplier))
    return optax.multi_transform({"head": tx, "backbone": backbone}, _head_or_backbone)


class LarsState(NamedTuple):
    """The step count (the schedule's argument) and the momentum buffers."""

    count: jax.Array
    momentum: optax.Updates


def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any,
    mask: Callable[[optax.Params], Any],
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    momentum: Any = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """LARS as MLPerf's ResNet-50 reference computes it (mlcommons/training
    ``image_classification/tensorflow2/lars_optimizer.py``, ``compute_lr`` and
    ``_resource_apply_dense``). Where `mask` is True:

        trust = trust_coefficient * |w| / (|g| + weight_decay * |w| + eps)   (1 if |w| or |g| is 0)
        m <- momentum * m + lr * trust * (g + weight_decay * w);   w <- w - m

    elsewhere (batch norm, biases: the reference's ``skip_list``) plain momentum
    with neither: ``m <- momentum * m + lr * g``. The learning rate is inside the
    momentum buffer (Keras's momentum), and the denominator adds the norms of the
    gradient and of the decay; optax's `lars` takes the norm of their sum and
    applies the rate after the momentum. `nesterov`: ``w <- w - momentum * m - lr * trust * (g + wd w)``.
    """

    def init(params: optax.Params) -> LarsState:
        return LarsState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads: optax.Updates, state: LarsState, params: optax.Params | None = None) -> tuple[Any, LarsState]:
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def one(g: jax.Array, w: jax.Array, m: jax.Array, adapt: bool) -> tuple[jax.Array, jax.Array]:
            if adapt:
                w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
                ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
                trust = jnp.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
                step = lr * trust * (g + weight_decay * w)
            else:
                step = lr * g
            m = momentum * m + step
            return -(momentum * m + step) if nesterov else -m, m

        adapt = mask(params)
        pairs = jax.tree_util.tree_map(one, grads, params, state.momentum, adapt)
        is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
        updates = jax.tree_util.tree_map(lambda p: p[0], pairs, is_leaf=is_pair)
        buffers = jax.tree_util.tree_map(lambda p: p[1], pairs, is_leaf=is_pair)
        return updates, LarsState(optax.safe_increment(state.count), buffers)

    return optax.GradientTransformation(init, update)


def _head_or_backbone(params: optax.Params) -> optax.Params:
    """Labels every parameter "head" or "backbone" (all top-level modules but ``head``)."""
    labels = {}
    for name, subtree in params.items():
        label = "head" if name == "head" else "backbone"
        labels[name] = jax.tree_util.tree_map(lambda _, label=label: label, subtree)
    return labels
