"""Pure train and eval steps. They hold no constants of their own: everything
comes from their arguments, the train step's options from one frozen
`StepOptions` built from the config once (`resnet_jax.training.loop`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.data.augment import normalize
from resnet_jax.training.state import TrainState

Metrics = dict[str, jax.Array]
BatchTransform = Callable[[jax.Array, jax.Array, jax.Array, dict[str, Any]], tuple[jax.Array, jax.Array]]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: Any = 0.0) -> jax.Array:
    """Per-example softmax cross entropy with optional label smoothing; `labels`
    are class indices [B] or soft targets [B, C] (already smoothed)."""
    targets = labels if labels.ndim == 2 else _smooth(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def binary_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: Any = 0.0, target_threshold: float = 0.0
) -> jax.Array:
    """Per-example sigmoid cross entropy over the classes, averaged over them as
    timm's `BinaryCrossEntropy` (``reduction="mean"`` over batch and classes)
    does; `labels` as in `cross_entropy`. `target_threshold` > 0: the (smoothed,
    mixed) targets become 1 above it and 0 elsewhere (timm's ``target_threshold``)."""
    targets = labels if labels.ndim == 2 else _smooth(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    if target_threshold > 0:
        targets = (targets > target_threshold).astype(logits.dtype)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


LOSSES = {"ce": cross_entropy, "bce": binary_cross_entropy}

# How gradient accumulation's micro-batches run (`StepOptions.micro_loop`): "scan", a `jax.lax.scan` (a while
# loop), holds one micro-batch's activations at a time, what accumulation is for; "unroll", the same scan unrolled
# in the program, runs at one pass's speed on XLA:CPU, whose gradients inside a while loop are about 10x slower, but
# XLA:CPU then holds about the whole batch's activations (docs/recipes.md, "Accumulation"); "auto": unroll on a
# CPU, scan on a GPU or TPU.
ACCUMULATION_LOOPS = ("auto", "scan", "unroll")


def _smooth(one_hot: jax.Array, label_smoothing: Any) -> jax.Array:
    """timm's and optax's smoothing: ``(1 - s) * one_hot + s / C`` (a traced `s` allowed)."""
    if isinstance(label_smoothing, (int, float)) and not label_smoothing:
        return one_hot
    return optax.smooth_labels(one_hot, label_smoothing)


def divergence_bound(num_classes: int) -> float:
    """The training loss above which a run has diverged: 100 x ln(num_classes).

    A network that outputs the uniform distribution has loss ln(C); a healthy run
    starts near it (or a few times above it, with large initial logits) and goes
    down, label smoothing included. 100 x ln(C) means the labelled class gets a
    probability of C^-100 on average: logits of hundreds, which only a run whose
    weights have blown up produces (a learning rate of 1e4 reaches 1e18).
    """
    return 100.0 * math.log(max(num_classes, 2))


@dataclass(frozen=True)
class StepOptions:
    """What a run's train step does besides its state, batch and per-member
    hyperparameters: fixed for the run.

    Attributes:
      mean, std, dtype: the images' normalisation and the compute dtype.
      label_smoothing, ema_decay: the values of members that do not sweep them.
      max_loss: the divergence bound (`divergence_bound`).
      make_tx: ``make_tx(hp)``, the optimiser of a member with hyperparameters `hp`.
      transform: ``transform(key, images, labels, hp) -> (images, targets)``,
        the batch augmentations (mixup, cutmix, ...: `resnet_jax.augment.batch`),
        keyed by the state's key and step (the same on resume); None: none.
      loss: "ce" or "bce" (`LOSSES`); bce_target_threshold: "bce"'s `target_threshold` (0: none).
      freeze_bn: batch norm uses (and keeps) its running statistics, as when fine-tuning.
      ema_every: the EMA is updated every this many steps.
      dropout: the model draws from a "dropout" rng (stochastic depth).
      micro_batches: gradient accumulation: the batch runs as this many
        micro-batches, one after another, for one update (`train_step`).
      micro_sharding: where the stacked micro-batches ``[k, B / k, ...]`` lie
        (each spread over the devices, as the batch was); None: XLA's choice.
      micro_loop: how the micro-batches run (`ACCUMULATION_LOOPS`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: Any
    label_smoothing: float
    ema_decay: float
    max_loss: float
    make_tx: Callable[[dict[str, Any]], optax.GradientTransformation]
    transform: BatchTransform | None = None
    loss: str = "ce"
    bce_target_threshold: float = 0.0
    freeze_bn: bool = False
    ema_every: int = 1
    dropout: bool = False
    micro_batches: int = 1
    micro_sharding: Any = None
    micro_loop: str = "auto"


def train_step(
    state: TrainState, batch: dict[str, jax.Array], hp: dict[str, jax.Array], options: StepOptions
) -> tuple[TrainState, Metrics]:
    """One optimiser step of one network on a global batch of uint8 images;
    returns the new state and ``{"loss", "accuracy"}`` averaged over the batch,
    and ``"diverged"``: whether the loss is not finite or above
    ``options.max_loss`` (checked here, on the device, at every step).

    `hp`: the network's own swept hyperparameters (`population.SWEEPABLE`,
    traced), overriding `options`' values; ``options.make_tx(hp)`` builds its
    optimiser.

    With ``options.micro_batches`` = k > 1 (gradient accumulation) the batch
    augmentations (``options.transform``) still run on the whole batch, with
    the key of k = 1 (the same draws), then positions ``[i * B / k, (i + 1) * B / k)``
    make micro-batch i, run one after another (``options.micro_loop``,
    `ACCUMULATION_LOOPS`). Each starts from the state's batch-norm
    statistics; the loss and the gradients are the means of the micro-batches'
    (the batch's mean: equal sizes), the new running statistics the mean of
    theirs (what one pass with batch-norm groups of B / k gives), and
    `TrainState.apply_gradients` runs once: the optimiser, the schedule's count
    and the EMA advance once per batch. A run with k micro-batches on one
    device trains what k devices with per-device batch norm did. Stochastic
    depth draws micro-batch i's masks from the dropout key with i folded in:
    with ``drop_path_rate`` > 0 they differ from k = 1's.
    """
    o = options
    smoothing = hp.get("label_smoothing", o.label_smoothing)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, targets = batch["image"], batch["label"]
    if o.transform is not None:
        images, targets = o.transform(jax.random.fold_in(key, 0), images, targets, {**hp, "label_smoothing": smoothing})
    images = normalize(images, o.mean, o.std, o.dtype)
    dropout_key = jax.random.fold_in(key, 1) if o.dropout else None

    def gradients(images: jax.Array, targets: jax.Array, dropout: jax.Array | None) -> tuple[Any, ...]:
        """(loss, grads, new batch statistics, logits) of one (micro-)batch from the state's variables."""
        rngs = {"dropout": dropout} if dropout is not None else {}

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            variables = {"params": params, "batch_stats": state.batch_stats}
            if o.freeze_bn:
                logits, batch_stats = state.apply_fn(variables, images, train=False), state.batch_stats
            else:
                logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)
                batch_stats = updates["batch_stats"]
            threshold = {"target_threshold": o.bce_target_threshold} if o.loss == "bce" else {}
            value = jnp.mean(LOSSES[o.loss](logits, targets, smoothing, **threshold))
            return value, (logits, batch_stats)

        (value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return value, grads, batch_stats, logits

    if o.micro_batches == 1:
        value, grads, batch_stats, logits = gradients(images, targets, dropout_key)
        hits = jnp.argmax(logits, -1) == batch["label"]
    else:
        value, grads, batch_stats, hits = _accumulate(gradients, state, images, targets, batch["label"], dropout_key, o)
    state = state.apply_gradients(grads, batch_stats, hp.get("ema_decay", o.ema_decay), o.make_tx(hp), o.ema_every)
    diverged = ~(value <= o.max_loss)  # NaN compares false
    return state, {"loss": value, "accuracy": jnp.mean(hits), "diverged": diverged}


def _accumulate(
    gradients: Callable[..., tuple[Any, ...]], state: TrainState, images: jax.Array, targets: jax.Array,
    labels: jax.Array, dropout_key: jax.Array | None, o: StepOptions,
) -> tuple[jax.Array, Any, Any, jax.Array]:
    """`gradients` of each of ``o.micro_batches`` micro-batches of consecutive
    positions, one after another: (mean loss, mean grads, mean batch
    statistics, hits [B]) (`train_step`)."""
    k = o.micro_batches

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(k, x.shape[0] // k, *x.shape[1:])
        return x if o.micro_sharding is None else jax.lax.with_sharding_constraint(x, o.micro_sharding)

    def body(carry: tuple[Any, Any], micro: tuple[jax.Array, ...]) -> tuple[tuple[Any, Any], tuple]:
        grad_sum, stats_sum = carry
        i, x, y, label = micro
        dropout = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        value, grads, batch_stats, logits = gradients(x, y, dropout)
        if not o.freeze_bn:
            stats_sum = jax.tree_util.tree_map(jnp.add, stats_sum, batch_stats)
        carry = jax.tree_util.tree_map(jnp.add, grad_sum, grads), stats_sum
        return carry, (value, jnp.argmax(logits, -1) == label)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, (state.params, state.batch_stats))
    micro = (jnp.arange(k), split(images), split(targets), split(labels))
    (grad_sum, stats_sum), (values, hits) = jax.lax.scan(body, zeros, micro, unroll=unrolls(o.micro_loop))
    grads = jax.tree_util.tree_map(lambda g: g / k, grad_sum)
    batch_stats = state.batch_stats if o.freeze_bn else jax.tree_util.tree_map(lambda s: s / k, stats_sum)
    return jnp.mean(values), grads, batch_stats, hits.reshape(-1)


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


def unrolls(micro_loop: str) -> bool:
    """Whether `micro_loop` (`ACCUMULATION_LOOPS`) unrolls the micro-batches."""
    if micro_loop not in ACCUMULATION_LOOPS:
        raise ValueError(f"unknown micro_loop {micro_loop!r}; use {', '.join(map(repr, ACCUMULATION_LOOPS))}")
    return micro_loop == "unroll" or (micro_loop == "auto" and jax.default_backend() == "cpu")
