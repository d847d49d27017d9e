"""Evaluate a checkpoint from its workdir (the evaluator itself is `resnet_jax.training.evaluator`).

``python train.py --config ... --workdir ... --mode=eval`` evaluates a
checkpoint on the config's evaluation split (`evaluate_checkpoint`). To load a
trained model in your own code, see `resnet_jax.restore`.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax
import ml_collections

from resnet_jax import parallel
from resnet_jax.errors import CheckpointMismatchError, stops_held, stops_raise, warn, write_advice
from resnet_jax.restore import restore, use_checkpoint_preprocessing
from resnet_jax.training.evaluator import make_evaluator


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | str | None = None) -> dict:
    """Evaluates a checkpoint of `workdir` on ``config.data.eval_split``, with the
    preprocessing its weights expect (the checkpoint's mean, std, image size and
    crop fraction, not the config's); returns the metrics, and writes them into
    the workdir as ``eval_<split>_<step>.json`` where it can (`write_record`:
    a workdir that cannot be written is a warning, not an error: evaluation only reads)."""
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
    [metrics] = make_evaluator(model, config, info["num_classes"], mesh, 1)(variables, pipeline.eval_batches())
    metrics["step"] = info["step"]
    split = config.data.eval_split.replace("/", "_")
    if jax.process_index() == 0:
        write_record(os.path.join(workdir, f"eval_{split}_{info['step']}.json"), metrics)
    return metrics


def evaluate_command(config: ml_collections.ConfigDict, workdir: str, step: int | str | None = None) -> None:
    """``train.py --mode=eval``: `evaluate_checkpoint`, then the metrics printed.
    Nothing is written before the end, so a SIGTERM or Ctrl-C stops it at once:
    one line, ``SIGTERM: train.py --mode=eval stopped; nothing was written``
    (`Preempted`, status 3; Ctrl-C a ``KeyboardInterrupt``, 130)."""
    with stops_raise("train.py --mode=eval", "nothing was written"):
        metrics = evaluate_checkpoint(config, workdir, step)
    if jax.process_index() == 0:
        per_class = metrics.pop("per_class_accuracy")
        print(json.dumps(metrics, indent=2))
        print("per-class top-1:", " ".join(f"{a:.3f}" for a in per_class))


def write_record(path: str, metrics: dict) -> bool:
    """Writes `metrics` as JSON to `path` whole or not at all (a temporary file
    beside it, renamed over it; a SIGTERM or Ctrl-C waits for the rename). Where
    it cannot (a read-only workdir, a full disk), one warning line names the path
    and the OS's reason, no partial file is left, and it returns False."""
    temporary = f"{path}.tmp"  # a fixed name: one left by a SIGKILL is written over by the next evaluation
    try:
        with stops_held():
            with open(temporary, "w") as f:
                json.dump(metrics, f, indent=2)
            os.replace(temporary, path)
        return True
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        advice = write_advice(e).split(" (")[0]
        warn(f"could not write {path} ({e.strerror or e}): the metrics are printed, not saved; {advice} to keep them")
        return False
