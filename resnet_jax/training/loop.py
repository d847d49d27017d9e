"""`train_and_evaluate`: the training job, from a config to a trained model in a workdir."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from resnet_jax import models, parallel, plot
from resnet_jax.data import make_pipeline
from resnet_jax.errors import CheckpointMismatchError, ConfigError, DivergedError
from resnet_jax.evaluate import make_evaluator
from resnet_jax.training import optim, steps
from resnet_jax.training.checkpoint import Checkpointer, run_metadata
from resnet_jax.training.finetune import load_pretrained
from resnet_jax.training.metrics import MetricWriter
from resnet_jax.training.state import TrainState, create_train_state


def model_from_config(config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """The configured model (`config.model`, `config.model_kwargs`, `config.half_precision`)."""
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    return models.create(config.model, num_classes=num_classes, dtype=dtype, **config.model_kwargs.to_dict())


class _Preemption:
    """Turns SIGTERM (a preemption notice) into a flag the loop checks each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_resumable(ckpt: Checkpointer, metadata: dict[str, Any]) -> None:
    saved = ckpt.metadata()
    for key in ("model", "num_classes", "model_kwargs"):
        if saved.get(key) != metadata[key]:
            raise CheckpointMismatchError(
                f"{ckpt.directory} holds a checkpoint of {key}={saved.get(key)!r}, but this run has "
                f"{key}={metadata[key]!r}; use another --workdir or the same model settings"
            )


def _resume_or_initialise(
    state: TrainState, ckpt: Checkpointer, metadata: dict[str, Any], config: ml_collections.ConfigDict, mesh: Any
) -> TrainState:
    """The latest checkpoint of the workdir if any (it must be of the same model),
    else ``config.init_from``'s variables if set, else `state` itself."""
    if ckpt.latest_step() is not None:
        _check_resumable(ckpt, metadata)
        state = ckpt.restore(state)
        if jax.process_index() == 0:
            print(f"Resumed from {ckpt.directory} at step {int(state.step)}.")
    elif config.init_from:
        state, report = load_pretrained(state, config.init_from, mesh)
        if jax.process_index() == 0:
            print(report)
    return state


def _announce(config: ml_collections.ConfigDict, workdir: str, state: TrainState, info: Any, total_steps: int) -> None:
    """Saves the resolved config into the workdir and prints what will run."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    print(
        f"{config.model}: {models.count_params(state.variables()):,} parameters, {info.num_classes} classes, "
        f"{info.num_train:,} train / {info.num_eval:,} eval examples, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {total_steps:,} steps of {config.batch_size}."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.model` on `config.data`, evaluating every epoch and
    checkpointing into `workdir`; resumes from the latest checkpoint there.

    Returns the last evaluation metrics (with ``"ema"`` ones when EMA is on).
    """
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    config = config.copy_and_resolve_references()
    config.eval_batch_size = parallel.fit_eval_batch_size(config.eval_batch_size, mesh)
    models.create(config.model)  # an unknown name fails here, before any data is read
    pipeline = make_pipeline(config, mesh)
    info = pipeline.info
    model = model_from_config(config, info.num_classes)

    steps_per_epoch = pipeline.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {info.num_train} training examples")
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config, schedule)
    state = create_train_state(model, tx, info.image_size, config.seed, mesh, use_ema=config.ema_decay > 0)

    is_main = jax.process_index() == 0
    metadata = run_metadata(config, info.class_names)
    ckpt = Checkpointer(workdir, config.keep_checkpoints, async_save=config.async_checkpoints,
                        data_iterator=getattr(pipeline, "data_iterator", None))  # Grain's: saved and restored too
    state = _resume_or_initialise(state, ckpt, metadata, config, mesh)
    if is_main:
        _announce(config, workdir, state, info, total_steps)

    train_step = pipeline.compile_step(
        functools.partial(
            steps.train_step,
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
            dtype=model.dtype,
            label_smoothing=config.label_smoothing,
            ema_decay=config.ema_decay,
            freeze_bn=config.freeze_bn,
        )
    )
    evaluate = make_evaluator(model, config, info.num_classes, mesh)
    writer = MetricWriter(workdir)
    results: dict[str, Any] = {}
    start_time = last_curves = time.time()
    try:
        with _Preemption() as preemption:
            step = int(jax.device_get(state.step))
            while step < total_steps and not preemption.requested:
                epoch, start = divmod(step, steps_per_epoch)
                todo = _steps_to_next_stop(step, steps_per_epoch, total_steps, config.eval_every_steps)
                state, train_metrics = _train_epoch(
                    state, train_step, pipeline.train_epoch(epoch, start), step, todo, epoch, config, preemption,
                    save=lambda s: ckpt.save(s, metadata),
                )
                step = int(jax.device_get(state.step))
                train_metrics["lr"] = float(schedule(step - 1))
                writer.write(step, "train", train_metrics)
                if _evaluates_at(step, steps_per_epoch, total_steps, config):
                    results = _evaluate_all(state, evaluate, pipeline, config)
                    for split, metrics in results.items():
                        writer.write(step, split, metrics)
                    if is_main:
                        tqdm.write(_summary_line(epoch, step, train_metrics, results))
                    if is_main and (step >= total_steps or time.time() - last_curves >= config.curves_every_seconds):
                        plot.write_curves(workdir)  # ~1 s with 164 evaluations: not at each one of a fast GPU run
                        last_curves = time.time()
                    ckpt.save(state, metadata, results["eval"])
                elif preemption.requested:
                    ckpt.save(state, metadata)
            if preemption.requested and is_main:
                print(f"SIGTERM: saved a checkpoint at step {step} in {ckpt.directory}; exiting.")
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
    if is_main and results:
        ev = results["eval"]
        print(
            f"Done: step {int(state.step)}, eval top-1 {ev['top1']:.4f}, top-5 {ev['top5']:.4f}, "
            f"loss {ev['loss']:.4f}, {time.time() - start_time:.0f}s. Workdir: {workdir}"
        )
    return results


def _steps_to_next_stop(step: int, steps_per_epoch: int, total_steps: int, eval_every_steps: int) -> int:
    """Steps from `step` to the end of its epoch, the end of training or the
    next multiple of `eval_every_steps` (when > 0), whichever comes first."""
    stop = min((step // steps_per_epoch + 1) * steps_per_epoch, total_steps)
    if eval_every_steps > 0:
        stop = min(stop, (step // eval_every_steps + 1) * eval_every_steps)
    return stop - step


def _evaluates_at(step: int, steps_per_epoch: int, total_steps: int, config: ml_collections.ConfigDict) -> bool:
    """Evaluation comes at the last step, and every ``eval_every_steps`` steps
    if that is > 0, else every ``eval_every_epochs`` epochs."""
    if step >= total_steps:
        return True
    if config.eval_every_steps > 0:
        return step % config.eval_every_steps == 0
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % config.eval_every_epochs == 0


def _train_epoch(
    state: TrainState,
    train_step: Callable,
    items: Any,
    first_step: int,
    num_steps: int,
    epoch: int,
    config: ml_collections.ConfigDict,
    preemption: _Preemption,
    save: Callable[[TrainState], None],
) -> tuple:
    """Runs up to `num_steps` steps with a progress bar, saving every
    ``config.checkpoint_every_steps`` (after a finite-loss check); returns the
    state and the epoch's mean loss, accuracy and images/s. Raises on a
    non-finite loss."""
    sums, done, t0 = None, 0, time.time()
    bar = tqdm(
        total=num_steps,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=jax.process_index() != 0,
        mininterval=0.5 if sys.stderr.isatty() else 60,  # a log file gets a line a minute, not one a step
    )
    for item in items:
        state, metrics = train_step(state, item)
        sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums, metrics)
        done += 1
        bar.update(1)
        every = config.checkpoint_every_steps
        save_now = every > 0 and (first_step + done) % every == 0 and done < num_steps
        if done % config.log_every_steps == 0 or done == num_steps or save_now:
            loss = float(sums["loss"]) / done
            if not np.isfinite(loss):
                raise DivergedError(
                    f"training loss is {loss} at step {int(jax.device_get(state.step))} (epoch {epoch + 1}); "
                    "stopping without saving: the last good checkpoint is kept. Lower the learning rate "
                    "or check the data."
                )
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{float(sums['accuracy']) / done:.4f}")
        if save_now:
            save(state)
        if done == num_steps or preemption.requested:
            break
    bar.close()
    jax.block_until_ready(state)
    seconds = time.time() - t0
    return state, {
        "loss": float(sums["loss"]) / done,
        "accuracy": float(sums["accuracy"]) / done,
        "images_per_sec": done * config.batch_size / seconds,
        "seconds": seconds,
    }


def _evaluate_all(state: TrainState, evaluate: Callable, pipeline: Any, config: ml_collections.ConfigDict) -> dict:
    t0 = time.time()
    results = {"eval": evaluate(state.variables(), pipeline.eval_batches())}
    results["eval"]["seconds"] = time.time() - t0
    results["eval"]["images_per_sec"] = results["eval"]["count"] / results["eval"]["seconds"]
    if config.ema_decay > 0:
        results["eval_ema"] = evaluate(state.variables(ema=True), pipeline.eval_batches())
    return results


def _summary_line(epoch: int, step: int, train: dict[str, float], results: dict[str, dict]) -> str:
    ev = results["eval"]
    line = (
        f"epoch {epoch + 1:3d} step {step:6d} | train loss {train['loss']:.4f} acc {train['accuracy']:.4f} "
        f"lr {train['lr']:.4g} {train['images_per_sec']:.0f} img/s | eval loss {ev['loss']:.4f} "
        f"top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} ({ev['images_per_sec']:.0f} img/s)"
    )
    if "eval_ema" in results:
        line += f" | ema top1 {results['eval_ema']['top1']:.4f}"
    return line


