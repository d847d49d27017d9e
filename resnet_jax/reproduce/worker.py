"""One run of a study, from training to its ``result.json``.

    python -m resnet_jax.reproduce.worker <run workdir> [--data-label TEXT]

trains the run whose resolved config is ``<run workdir>/config.json`` (the
study writes it), resuming from its latest checkpoint, and then summarises
each of its seeds.
The study calls `finish_run` in its own process, or this module in a process of
its own per run with ``--parallel``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import models, plot
from resnet_jax.data import load_split_arrays
from resnet_jax.data.augment import normalize
from resnet_jax.errors import EXIT_PREEMPTED, Interrupted, Preempted, exit_on_user_error, run_main
from resnet_jax.models.responses import response_std
from resnet_jax.reproduce.study import RESULT_FILE, write_json
from resnet_jax.restore import restore
from resnet_jax.training import population
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.loop import train_and_evaluate

_TEST_IMAGES: dict[str, np.ndarray] = {}


def test_images(data: ml_collections.ConfigDict) -> np.ndarray:
    """The evaluation split's uint8 images (decoded once per process and data config)."""
    key = data.to_json_best_effort()
    if key not in _TEST_IMAGES:
        _TEST_IMAGES[key] = load_split_arrays(data, data.eval_split)[0]
    return _TEST_IMAGES[key]


def layer_responses(model: Any, variables: Any, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Figure 7's statistic for a trained model, on the evaluation split of `config`."""
    images = test_images(config.data)
    size = config.eval_batch_size
    batches = (
        normalize(jnp.asarray(images[i : i + size]), config.data.mean, config.data.std)
        for i in range(0, len(images), size)
    )
    return response_std(model, variables, batches)


def final_train_error(train: list[dict[str, Any]], last_steps: int) -> float:
    """The training error over the last `last_steps` steps (the records of every
    ``log_every_steps`` averaged, each weighted by its steps)."""
    end = train[-1]["step"]
    recent = [r for r in train if r["step"] > end - last_steps] or train[-1:]
    steps = [r.get("steps", 1) for r in recent]
    return 1.0 - sum(r["accuracy"] * n for r, n in zip(recent, steps)) / sum(steps)


def summarize(config: ml_collections.ConfigDict, workdir: str, data_label: str) -> list[dict[str, Any]]:
    """Per seed: errors (final and best test, final training: over the last
    evaluation interval), parameters, steps and seconds of a finished run, from
    its metrics and latest checkpoint."""
    out = []
    members = population.from_config(config)
    for k, seed_dir in enumerate(population.member_dirs(workdir, members)):
        records = plot.read_metrics(seed_dir)
        evals, train = records["eval"], records["train"]
        model, variables, _ = restore(workdir, "latest", member=k)
        out.append({
            "model": config.model,
            "seed": int(config.seed) + k,
            "params": models.count_params(variables),
            "layers": models.count_layers(variables),
            "final_test_error": 1.0 - evals[-1]["top1"],
            "best_test_error": 1.0 - max(r["top1"] for r in evals),
            "final_train_error": final_train_error(train, config.eval_every_steps or evals[-1]["step"]),
            "steps": evals[-1]["step"],
            "wall_seconds": sum(r["seconds"] for r in train) + sum(r.get("seconds", 0.0) for r in evals),
            "seeds_together": int(config.num_seeds),
            "data": data_label,
            "layer_response_std": layer_responses(model, variables, config),
        })  # fmt: skip
    return out
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
    ``result.json`` (``{"seeds": [per seed]}``); returns None if training
    stopped before the end (SIGTERM; a Ctrl-C's `Interrupted` is raised)."""
    if _trained_steps(workdir) < config.num_train_steps:
        try:
            train_and_evaluate(config, workdir)
        except Interrupted:
            raise  # Ctrl-C: the study stops here, with training's line (status 130)
        except Preempted as e:
            print(e)
            return None
    result = {"model": config.model, "seeds": summarize(config, workdir, data_label)}
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
        return 0 if finish_run(config, args.workdir, args.data_label) is not None else EXIT_PREEMPTED


if __name__ == "__main__":
    run_main(main)
