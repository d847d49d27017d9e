"""Evaluation: exact metrics over a whole split, and a checkpoint evaluated from its workdir.

``python train.py --config ... --workdir ... --mode=eval`` evaluates a
checkpoint on the config's evaluation split (`evaluate_checkpoint`). To load a
trained model in your own code, see `resnet_jax.restore`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import parallel
from resnet_jax.errors import CheckpointMismatchError
from resnet_jax.training import steps
from resnet_jax.training.checkpoint import restore, use_checkpoint_preprocessing


def make_evaluator(model: Any, config: ml_collections.ConfigDict, num_classes: int, mesh: Any) -> Callable:
    """``evaluate(variables, batches) -> metrics`` over padded, masked host batches."""
    eval_fn = jax.jit(
        functools.partial(
            steps.eval_step,
            apply_fn=model.apply,
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
            dtype=model.dtype,
            num_classes=num_classes,
            flip=config.eval_flip,
        )
    )

    def evaluate(variables: Any, batches: Iterable[dict]) -> dict[str, Any]:
        sums = None
        for batch in batches:
            out = eval_fn(variables, parallel.shard_batch(batch, mesh))
            sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
        return steps.summarize_eval(sums)

    return evaluate


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | str | None = None) -> dict:
    """Evaluates a checkpoint of `workdir` on ``config.data.eval_split``, with the
    preprocessing its weights expect (the checkpoint's mean, std, image size and
    crop fraction, not the config's); writes ``eval_<split>_<step>.json`` into the
    workdir and returns the metrics."""
    from resnet_jax.data import make_pipeline

    model, variables, info = restore(workdir, step)
    mesh = parallel.make_mesh()
    eval_batch_size = parallel.fit_eval_batch_size(config.eval_batch_size, mesh)
    config = config.copy_and_resolve_references()
    config.eval_batch_size = eval_batch_size
    changes = use_checkpoint_preprocessing(config, info)
    if changes and jax.process_index() == 0:
        print(f"evaluating with the checkpoint's preprocessing: {', '.join(changes)}")
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
