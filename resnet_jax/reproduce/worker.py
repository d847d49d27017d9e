"""One run of a study, from training to its ``result.json``.

    python -m resnet_jax.reproduce.worker <run workdir> [--data-label TEXT]

trains the run whose resolved config is ``<run workdir>/config.json`` (the
study writes it), resuming from its latest checkpoint, and then summarises it.
The study calls `finish_run` in its own process, or this module in a process of
its own per run with ``--parallel``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import models, plot
from resnet_jax.data import load_split_arrays
from resnet_jax.data.augment import normalize
from resnet_jax.errors import exit_on_user_error
from resnet_jax.models.responses import response_std
from resnet_jax.reproduce.study import RESULT_FILE, write_json
from resnet_jax.training.checkpoint import Checkpointer, restore
from resnet_jax.training.loop import train_and_evaluate

_TEST_IMAGES: dict[str, np.ndarray] = {}


def test_images(data: ml_collections.ConfigDict) -> np.ndarray:
    """The evaluation split's uint8 images (decoded once per process and data config)."""
    key = data.to_json_best_effort()
    if key not in _TEST_IMAGES:
        _TEST_IMAGES[key] = load_split_arrays(data, data.eval_split)[0]
    return _TEST_IMAGES[key]


def layer_responses(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Figure 7's statistic for the run's latest checkpoint, on the evaluation split."""
    model, variables, _ = restore(workdir, "latest")
    images = test_images(config.data)
    size = config.eval_batch_size
    batches = (
        normalize(jnp.asarray(images[i : i + size]), config.data.mean, config.data.std)
        for i in range(0, len(images), size)
    )
    return response_std(model, variables, batches)


def summarize(config: ml_collections.ConfigDict, workdir: str, data_label: str) -> dict[str, Any]:
    """Errors (final and best test, final training), parameters, steps and
    seconds of a finished run, from its metrics and latest checkpoint."""
    records = plot.read_metrics(workdir)
    evals, train = records["eval"], records["train"]
    responses = layer_responses(config, workdir)
    _, variables, _ = restore(workdir, "latest")
    return {
        "model": config.model,
        "seed": int(config.seed),
        "params": models.count_params(variables),
        "final_test_error": 1.0 - evals[-1]["top1"],
        "best_test_error": 1.0 - max(r["top1"] for r in evals),
        "final_train_error": 1.0 - train[-1]["accuracy"],
        "steps": evals[-1]["step"],
        "wall_seconds": sum(r["seconds"] for r in train) + sum(r.get("seconds", 0.0) for r in evals),
        "data": data_label,
        "layer_response_std": responses,
    }


def _trained_steps(workdir: str) -> int:
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return 0
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        return ckpt.latest_step() or 0
    finally:
        ckpt.close()


def finish_run(config: ml_collections.ConfigDict, workdir: str, data_label: str) -> dict[str, Any] | None:
    """Trains the run to its last step (resuming), then writes and returns its
    ``result.json``; returns None if training stopped before the end (SIGTERM)."""
    if _trained_steps(workdir) < config.num_train_steps:
        train_and_evaluate(config, workdir)
        if _trained_steps(workdir) < config.num_train_steps:
            return None
    result = summarize(config, workdir, data_label)
    write_json(os.path.join(workdir, RESULT_FILE), result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.reproduce.worker", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="a run's folder holding the config.json the study wrote")
    parser.add_argument("--data-label", default="", help="the data set's name for the report")
    args = parser.parse_args(argv)
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with exit_on_user_error():
        return 0 if finish_run(config, args.workdir, args.data_label) is not None else 3


if __name__ == "__main__":
    sys.exit(main())
