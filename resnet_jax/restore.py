"""The public restore API: a trained model, or a checkpoint's metadata, from a
workdir, as research code and the tools (evaluate, predict, export, fine-tuning
with ``init_from``) load them.

``resnet_jax.restore(workdir)`` rebuilds the network a run trained (or weights
converted by `resnet_jax.convert`) and loads its variables; `read_metadata`
reads what a checkpoint says about itself without its arrays. Both pick the
step ("latest", "best" or a number) among the readable checkpoints, skipping a
damaged one with a warning, and take one member out of a population. Storage
is `resnet_jax.training.checkpoint`'s, the metadata's schema
`resnet_jax.training.metadata`'s; nothing here imports the training loop.

The package imports `restore` itself as ``resnet_jax.restore``, so that name is
the function; this module's other names import as
``from resnet_jax.restore import read_metadata``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from resnet_jax import models
from resnet_jax.errors import CheckpointDamagedError, ConfigError, NotFoundError, warn
from resnet_jax.training import population as pop
from resnet_jax.training.checkpoint import Checkpointer


def restore(
    workdir: str, step: int | str | None = None, ema: bool = False, member: int | None = None
) -> tuple[Any, dict, dict]:
    """Rebuilds the model of a training run (or of converted weights) and loads its variables.

    Args:
      workdir: the run's workdir (holding ``checkpoints/``), or a member's
        folder of a run that trained a population (``seed<k>``, or one named by
        its swept values).
      step: a step number, "latest" (default) or "best" (highest eval top-1;
        the mean over the members of a population; an error where no
        checkpoint holds an evaluation yet, rather than the latest).
      ema: load the EMA weights (if the run kept them).
      member: which member of a population (0 ... K - 1, in the order of its
        checkpoint's ``members``); needed for such a run unless `workdir` is a
        member's folder.

    Returns:
      ``(model, variables, info)``: a Flax module, ``{"params", "batch_stats"}``
      for ``model.apply(variables, images, train=False)`` (images normalised
      with ``info["mean"]``/``info["std"]``; see `preprocess`), and the
      checkpoint's metadata (class names, image size, metrics, step, config;
      a member's own seed, values and metrics).
    """
    parent = pop.member_folder(workdir, read_metadata)
    if parent is not None and member is None:
        workdir, member = parent
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise NotFoundError(f"{workdir!r} holds no checkpoints/ folder: is it a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        info, tree = _first_readable(ckpt, step, lambda s: (ckpt.metadata(s), ckpt.restore_tree(s)))
    finally:
        ckpt.close()
    step = info["step"]
    tree, info = _one_member(tree, info, workdir, member)
    dtype = jnp.bfloat16 if info["half_precision"] else jnp.float32
    model = models.create(info["model"], num_classes=info["num_classes"], dtype=dtype, **info["model_kwargs"])
    prefix = "ema_" if ema else ""
    if ema and "ema_params" not in tree:
        raise ConfigError(f"the checkpoint of step {step} in {workdir!r} holds no EMA weights")
    variables = {"params": tree[prefix + "params"], "batch_stats": tree[prefix + "batch_stats"]}
    return model, variables, info


def _one_member(tree: dict, info: dict, workdir: str, member: int | None) -> tuple[dict, dict]:
    """Member `member` of a checkpoint of a population, with its own metrics,
    seed and values in the metadata; a checkpoint of one member as it is."""
    size = info["num_members"]
    if size == 1:
        if member not in (None, 0):
            raise ConfigError(f"{workdir!r} trained one network; there is no member {member}")
        return tree, info
    if member is None or not 0 <= member < size:
        names = info["member_names"]
        raise ConfigError(
            f"{workdir!r} holds {size} networks trained together: restore one with member=k (0 to {size - 1}) "
            f"or from its folder {os.path.join(workdir, names[0])!r}"
        )
    metrics = info["metrics"] or {}
    info = {**info, **info["members"][member], "member": member, "num_members": 1, "num_seeds": 1}
    info["metrics"] = metrics["per_member"][member] if "per_member" in metrics else None
    return pop.take(tree, member), info


def read_metadata(workdir: str, step: int | str | None = None) -> dict[str, Any]:
    """The metadata of a checkpoint of `workdir` (`step` as in `restore`), without
    its arrays, in the current schema (`resnet_jax.training.metadata`)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise NotFoundError(f"{workdir!r} holds no checkpoints/ folder: is it a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        return _first_readable(ckpt, step, ckpt.metadata)
    finally:
        ckpt.close()


PREPROCESSING = ("mean", "std", "image_size", "crop_fraction")


def use_checkpoint_preprocessing(
    config: ml_collections.ConfigDict, info: dict[str, Any], fields: tuple[str, ...] = PREPROCESSING
) -> list[str]:
    """Sets `fields` of ``config.data`` (in place) to the preprocessing the checkpoint's
    weights were evaluated with (`info`: its metadata, e.g. from a conversion of
    timm's weights with mean = std = 0.5); returns ``"field old -> new"`` for each change."""
    changes = []
    for field in fields:
        old, new = config.data[field], info[field]
        if isinstance(new, list):
            old, new = tuple(old), tuple(new)
        if old != new:
            changes.append(f"{field} {old} -> {new}")
            config.data[field] = new
    return changes


def _candidates(ckpt: Checkpointer, step: int | str | None) -> list[int]:
    """The steps that `step` ("latest", "best" or a number) may be, in order of preference."""
    if step in (None, "latest", "best"):
        found = ckpt.by_preference("best" if step == "best" else "latest")
        if not found:
            raise NotFoundError(f"no checkpoint in {ckpt.directory}")
        if step == "best" and not (ckpt.metadata(found[0])["metrics"] or {}).get("top1"):  # "best" ranks the
            raise NotFoundError(  # evaluated steps first: none is, and "best" would quietly mean "latest"
                f'step "best" needs an evaluated checkpoint, and none of {ckpt.directory} holds an evaluation '
                f'(its steps: {sorted(found)}); name one of them, or "latest"'
            )
        return found
    try:
        number = int(step)
    except ValueError:
        raise ConfigError(f'step {step!r} is not "latest", "best" or a step number') from None
    if number not in ckpt.all_steps():
        raise NotFoundError(f"no checkpoint of step {number} in {ckpt.directory}; it has {ckpt.all_steps()}")
    return [number]


def _first_readable(ckpt: Checkpointer, step: int | str | None, read: Callable[[int], Any]) -> Any:
    """`read(s)` of the first of `step`'s candidates that can be read; those that
    cannot are skipped with a warning (left in place: this only reads). An
    explicit step that cannot be read is an error naming the other steps."""
    candidates = _candidates(ckpt, step)
    for s in candidates:
        try:
            return read(s)
        except CheckpointDamagedError as e:
            if len(candidates) == 1:
                others = [o for o in ckpt.all_steps() if o != s]
                raise CheckpointDamagedError(f"{e}; the other checkpoints: {others or 'none'}") from None
            warn(f"{e}; skipped")
    raise CheckpointDamagedError(f"none of the checkpoints {candidates} of {ckpt.directory} can be read")
