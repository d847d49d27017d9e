"""Restore a trained model from a workdir, and evaluate it.

    model, variables, info = resnet_jax.restore("runs/r20")          # latest
    model, variables, info = resnet_jax.restore("runs/r20", "best")  # best eval top-1
    logits = model.apply(variables, images, train=False)

The model is rebuilt from the checkpoint's metadata (name, arguments, number
of classes), so no config file is needed, and it restores on any number and
kind of devices. ``python train.py --config ... --workdir ... --mode=eval``
evaluates a checkpoint on the config's evaluation split (`evaluate_checkpoint`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from resnet_jax import models, parallel
from resnet_jax.training.checkpoint import Checkpointer, CheckpointMismatchError


def _resolve_step(ckpt: Checkpointer, step: int | str | None) -> int:
    if step in (None, "latest"):
        found = ckpt.latest_step()
    elif step == "best":
        found = ckpt.best_step()
    else:
        found = int(step)
        if found not in ckpt.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {found} in {ckpt.directory}; it has {ckpt.all_steps()}")
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    return found


def restore(workdir: str, step: int | str | None = None, ema: bool = False) -> tuple[Any, dict, dict]:
    """Rebuilds the model of a training run and loads its variables.

    Args:
      workdir: the run's workdir (holding ``checkpoints/``).
      step: a step number, "latest" (default) or "best" (highest eval top-1).
      ema: load the EMA weights (if the run kept them).

    Returns:
      ``(model, variables, info)``: a Flax module, ``{"params", "batch_stats"}``
      for ``model.apply(variables, images, train=False)`` (images normalised
      with ``info["mean"]``/``info["std"]``; see `preprocess`), and the
      checkpoint's metadata (class names, image size, metrics, step, config).
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir!r} holds no checkpoints/ folder: is it a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        step = _resolve_step(ckpt, step)
        info = ckpt.metadata(step)
        tree = ckpt.restore_tree(step)
    finally:
        ckpt.close()
    dtype = jnp.bfloat16 if info.get("half_precision") else jnp.float32
    model = models.create(info["model"], num_classes=info["num_classes"], dtype=dtype, **info["model_kwargs"])
    prefix = "ema_" if ema else ""
    if ema and "ema_params" not in tree:
        raise ValueError(f"the checkpoint of step {step} in {workdir!r} holds no EMA weights")
    variables = {"params": tree[prefix + "params"], "batch_stats": tree[prefix + "batch_stats"]}
    return model, variables, info


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | str | None = None) -> dict:
    """Evaluates a checkpoint of `workdir` on ``config.data.eval_split``; writes
    ``eval_<split>_<step>.json`` into the workdir and returns the metrics."""
    from resnet_jax.data import make_pipeline
    from resnet_jax.training.loop import make_evaluator

    model, variables, info = restore(workdir, step)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    pipeline = make_pipeline(config, mesh)
    dataset_classes = list(pipeline.info.class_names)
    if dataset_classes != info["class_names"]:
        raise CheckpointMismatchError(
            f"the checkpoint's classes {info['class_names']} differ from the dataset's {dataset_classes}"
        )
    variables = parallel.replicate(variables, mesh)
    metrics = make_evaluator(model, config, info["num_classes"], mesh)(variables, pipeline.eval_batches())
    metrics["step"] = info["step"]
    split = config.data.eval_split.replace("/", "_")
    with open(os.path.join(workdir, f"eval_{split}_{info['step']}.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics
