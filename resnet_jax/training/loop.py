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
from tqdm import tqdm

from resnet_jax import models, parallel, plot
from resnet_jax.data import make_pipeline
from resnet_jax.errors import ConfigError, DivergedError, Preempted
from resnet_jax.training import optim, seeds, steps
from resnet_jax.training.checkpoint import Checkpointer, check_resumable, restore_newest, run_metadata
from resnet_jax.training.compiled import compile_train_step
from resnet_jax.training.evaluator import make_evaluator
from resnet_jax.training.finetune import load_pretrained, use_pretrained_normalization
from resnet_jax.training.lock import WorkdirLock
from resnet_jax.training.metrics import MetricWriter, TrainLog
from resnet_jax.training.state import TrainState, create_train_state, step_of


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


def _resume_or_initialise(
    state: TrainState, ckpt: Checkpointer, metadata: dict[str, Any], config: ml_collections.ConfigDict, mesh: Any
) -> TrainState:
    """The newest readable checkpoint of the workdir if any (of the same model,
    batch size, classes and data: `check_resumable`; damaged ones are set aside),
    else ``config.init_from``'s variables if set, else `state` itself."""
    check = functools.partial(check_resumable, current=metadata, where=ckpt.directory)
    resumed = restore_newest(ckpt, state, check)
    if resumed is not None:
        state = resumed
        if jax.process_index() == 0:
            print(f"Resumed from {ckpt.directory} at step {step_of(state)}.")
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
    variables = state.variables() if config.num_seeds == 1 else seeds.take(state.variables(), 0)
    print(
        f"{config.model}: {models.count_params(variables):,} parameters, {info.num_classes} classes, "
        f"{info.num_train:,} train / {info.num_eval:,} eval examples, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {total_steps:,} steps of {config.batch_size}."
    )
    if config.num_seeds > 1:
        how = {"vmap": "vmapped (the same kernels)", "loop": "looped (one after another)"}
        print(f"{config.num_seeds} seeds ({', '.join(map(str, seeds.seed_values(config)))}) train together in one "
              f"step, {how[parallel.seed_batching(config.seed_batching)]}; each seed's metrics and curves go to "
              f"{workdir}/seed<k>/.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.model` on `config.data`, evaluating every epoch and
    checkpointing into `workdir`; resumes from the latest checkpoint there.
    With ``config.num_seeds > 1`` the seeds train together (`resnet_jax.training.seeds`).

    Returns the last evaluation metrics (with ``"ema"`` ones when EMA is on);
    for several seeds, their means with each seed's own under ``"per_seed"``.

    Raises:
      Preempted: SIGTERM stopped training before its last step (after a save).
      WorkdirBusyError: another process is training in `workdir`.
      DivergedError: the training loss went above the divergence bound or is
        not finite; nothing after it was saved.
      CheckpointWriteError: a checkpoint could not be written (a full disk).
    """
    with WorkdirLock(workdir), _Preemption() as preemption:  # from the start: SIGTERM while loading is kept
        return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, preemption: _Preemption) -> dict[str, Any]:
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    config = config.copy_and_resolve_references()
    config.eval_batch_size = parallel.fit_eval_batch_size(config.eval_batch_size, mesh)
    seeds.check(config)
    use_pretrained_normalization(config)
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
    seed = config.seed if config.num_seeds == 1 else seeds.seed_values(config)
    state = create_train_state(model, tx, info.image_size, seed, mesh, use_ema=config.ema_decay > 0)

    is_main = jax.process_index() == 0
    metadata = run_metadata(config, info.class_names, info.num_train)
    data_iterator = getattr(pipeline, "data_iterator", None)  # Grain's: saved and restored with the state
    ckpt = Checkpointer(
        workdir, config.keep_checkpoints, async_save=config.async_checkpoints, data_iterator=data_iterator
    )
    state = _resume_or_initialise(state, ckpt, metadata, config, mesh)
    if is_main:
        _announce(config, workdir, state, info, total_steps)

    max_loss = config.max_train_loss if config.max_train_loss > 0 else steps.divergence_bound(info.num_classes)
    train_step = compile_train_step(
        functools.partial(
            steps.train_step,
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
            dtype=model.dtype,
            label_smoothing=config.label_smoothing,
            ema_decay=config.ema_decay,
            max_loss=max_loss,
            freeze_bn=config.freeze_bn,
        ),
        pipeline,
        config.seed_batching,
    )
    evaluate = make_evaluator(model, config, info.num_classes, mesh, config.num_seeds)
    seed_dirs = seeds.seed_workdirs(workdir, config.num_seeds)
    writers = [MetricWriter(d) for d in seed_dirs]
    log = TrainLog(writers, config.batch_size, schedule, max_loss)
    results: dict[str, Any] = {}
    start_time = last_curves = time.time()
    try:
        step = step_of(state)
        while step < total_steps and not preemption.requested:
            epoch, start = divmod(step, steps_per_epoch)
            todo = _steps_to_next_stop(step, steps_per_epoch, total_steps, config.eval_every_steps)
            try:
                state, done = _train_epoch(
                    state, train_step, pipeline.train_epoch(epoch, start), step, todo, epoch, config, preemption,
                    log, ckpt, save=lambda s: ckpt.save(s, metadata),
                )
            except DivergedError as e:
                ckpt.wait()
                kept = ckpt.latest_step()
                where = f"step {kept} stays the latest checkpoint" if kept is not None else "no checkpoint exists"
                raise DivergedError(f"{e}; {where}") from None
            step += done  # counted here: reading the state's step back would wait for the device
            if _evaluates_at(step, steps_per_epoch, total_steps, config):
                per_seed = _evaluate_all(state, evaluate, pipeline, config)
                for writer, seed_results in zip(writers, per_seed):
                    for split, metrics in seed_results.items():
                        writer.write(step, split, metrics)
                results = {split: seeds.combine([r[split] for r in per_seed]) for split in per_seed[0]}
                if is_main:
                    tqdm.write(_summary_line(epoch, step, log.last, results))
                if is_main and (step >= total_steps or time.time() - last_curves >= config.curves_every_seconds):
                    for d in seed_dirs:  # ~1 s with 164 evaluations: not at each one of a fast GPU run
                        plot.write_curves(d)
                    last_curves = time.time()
                ckpt.save(state, metadata, results["eval"])
                log.restart_clock()
            elif preemption.requested:
                ckpt.save(state, metadata)
        if preemption.requested and step < total_steps:
            ckpt.wait()
            saved = ckpt.latest_step()
            if saved == step:
                what = f"saved a checkpoint at step {step} of {total_steps} in {ckpt.directory}"
            else:  # SIGTERM came while the run was starting: nothing trained, nothing to save
                what = f"stopped before training (at step {step} of {total_steps}); nothing new to save"
            raise Preempted(f"SIGTERM: {what}; the same command resumes")
    finally:
        ckpt.wait()
        ckpt.close()
        for writer in writers:
            writer.close()
    if is_main and results:
        ev = results["eval"]
        print(
            f"Done: step {step}, eval top-1 {ev['top1']:.4f}, top-5 {ev['top5']:.4f}, "
            f"loss {ev['loss']:.4f}{' (means over seeds)' if config.num_seeds > 1 else ''}, "
            f"{time.time() - start_time:.0f}s. Workdir: {workdir}"
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
    log: TrainLog,
    ckpt: Checkpointer,
    save: Callable[[TrainState], None],
) -> tuple[TrainState, int]:
    """Runs up to `num_steps` steps with a progress bar, writing the training
    metrics every ``config.log_every_steps`` and at the end (where the log stops
    a diverged run, and a failed asynchronous save stops it too), and saving
    every ``config.checkpoint_every_steps`` (after the log's check); returns the
    state and the number of steps run."""
    done = 0
    bar = tqdm(
        total=num_steps,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=jax.process_index() != 0,
        mininterval=0.5 if sys.stderr.isatty() else 60,  # a log file gets a line a minute, not one a step
    )
    for item in items:
        state, metrics = train_step(state, item)
        log.add(metrics)
        done += 1
        bar.update(1)
        step, every = first_step + done, config.checkpoint_every_steps
        save_now = every > 0 and step % every == 0 and done < num_steps
        if step % config.log_every_steps == 0 or done == num_steps or save_now or preemption.requested:
            records = log.flush(step)
            ckpt.check_saved()
            bar.set_postfix(loss=f"{records[0]['loss']:.4f}", acc=f"{records[0]['accuracy']:.4f}", refresh=False)
        if save_now:
            save(state)
        if done == num_steps or preemption.requested:
            break
    bar.close()
    return state, done


def _evaluate_all(
    state: TrainState, evaluate: Callable, pipeline: Any, config: ml_collections.ConfigDict
) -> list[dict[str, dict]]:
    """``[{"eval": metrics, "eval_ema": metrics}]``, one per seed."""
    t0 = time.time()
    evals = evaluate(state.variables(), pipeline.eval_batches())
    seconds = time.time() - t0
    emas = evaluate(state.variables(ema=True), pipeline.eval_batches()) if config.ema_decay > 0 else None
    out = []
    for k, ev in enumerate(evals):
        ev = {**ev, "seconds": seconds, "images_per_sec": ev["count"] * len(evals) / seconds}
        out.append({"eval": ev} if emas is None else {"eval": ev, "eval_ema": emas[k]})
    return out


def _summary_line(epoch: int, step: int, train: list[dict[str, float]], results: dict[str, dict]) -> str:
    ev, tr = results["eval"], train[0] if len(train) == 1 else seeds.combine(train)
    line = (
        f"epoch {epoch + 1:3d} step {step:6d} | train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f} "
        f"lr {tr['lr']:.4g} {tr['images_per_sec'] * len(train):.0f} img/s | eval loss {ev['loss']:.4f} "
        f"top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} ({ev['images_per_sec']:.0f} img/s)"
    )
    if "per_seed" in ev:
        line += " | seeds' top1 " + " ".join(f"{r['top1']:.4f}" for r in ev["per_seed"])
    if "eval_ema" in results:
        line += f" | ema top1 {results['eval_ema']['top1']:.4f}"
    return line
