"""Pure train and eval steps. They hold no constants of their own: everything
comes from their arguments (bind them with `functools.partial`, then `jax.jit`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.data.augment import normalize
from resnet_jax.training.state import TrainState

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross entropy with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def divergence_bound(num_classes: int) -> float:
    """The training loss above which a run has diverged: 100 x ln(num_classes).

    A network that outputs the uniform distribution has loss ln(C); a healthy run
    starts near it (or a few times above it, with large initial logits) and goes
    down, label smoothing included. 100 x ln(C) means the labelled class gets a
    probability of C^-100 on average: logits of hundreds, which only a run whose
    weights have blown up produces (a learning rate of 1e4 reaches 1e18).
    """
    return 100.0 * math.log(max(num_classes, 2))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: Any,
    label_smoothing: float,
    ema_decay: float,
    max_loss: float = math.inf,
    freeze_bn: bool = False,
) -> tuple[TrainState, Metrics]:
    """One SGD step on a global batch of uint8 images; returns the new state and
    ``{"loss", "accuracy"}`` averaged over the batch, and ``"diverged"``: whether
    the loss is not finite or above `max_loss` (checked here, on the device, at
    every step). With `freeze_bn`, batch norm uses (and keeps) its running
    statistics, as when fine-tuning."""
    images = normalize(batch["image"], mean, std, dtype)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables = {"params": params, "batch_stats": state.batch_stats}
        if freeze_bn:
            logits, batch_stats = state.apply_fn(variables, images, train=False), state.batch_stats
        else:
            logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
        return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads, batch_stats, ema_decay)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    diverged = ~(loss <= max_loss)  # NaN compares false
    return state, {"loss": loss, "accuracy": accuracy, "diverged": diverged}


def eval_step(
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    apply_fn: Any,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: Any,
    num_classes: int,
    flip: bool = False,
) -> Metrics:
    """Sums over the real (``mask == 1``) examples of a padded batch: loss, top-1
    and top-5 hits, and per-class hits and counts. With `flip`, the logits are
    averaged over each image and its mirror image (test-time augmentation)."""
    images = normalize(batch["image"], mean, std, dtype)
    logits = apply_fn(variables, images, train=False)
    if flip:
        logits = (logits + apply_fn(variables, images[:, :, ::-1], train=False)) / 2
    labels, mask = batch["label"], batch["mask"]
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    hit1 = (top5[:, 0] == labels) * mask
    hit5 = jnp.any(top5 == labels[:, None], axis=-1) * mask
    onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    return {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "top1": jnp.sum(hit1),
        "top5": jnp.sum(hit5),
        "count": jnp.sum(mask),
        "class_hits": jnp.sum(onehot * hit1[:, None], axis=0),
        "class_count": jnp.sum(onehot, axis=0),
    }


def summarize_eval(sums: Metrics) -> dict[str, Any]:
    """Eval sums -> loss, top-1, top-5 (means) and per-class accuracy (a list)."""
    sums = jax.device_get(sums)
    n = float(sums["count"])
    per_class = sums["class_hits"] / jnp.maximum(sums["class_count"], 1)
    return {
        "loss": float(sums["loss"]) / n,
        "top1": float(sums["top1"]) / n,
        "top5": float(sums["top5"]) / n,
        "count": int(n),
        "per_class_accuracy": [round(float(a), 6) for a in per_class],
    }
