"""`train_and_evaluate`: the training job, from a config to a trained model in a workdir."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from tqdm import tqdm

from resnet_jax import batch_layout, models, parallel, plot
from resnet_jax.augment import batch as batch_augment
from resnet_jax.data import make_pipeline, resolution
from resnet_jax.errors import ConfigError, DivergedError, Interrupted, Preempted, StoppedNow, cannot_write
from resnet_jax.training import config_check, optim, population, population_report, steps
from resnet_jax.training.checkpoint import Checkpointer, newest_metadata, restore_newest
from resnet_jax.training.compiled import compile_train_step
from resnet_jax.training.evaluator import make_evaluator
from resnet_jax.training.finetune import load_pretrained, use_pretrained_normalization
from resnet_jax.training.lock import WorkdirLock
from resnet_jax.training.metadata import check_resumable, run_metadata
from resnet_jax.training.metrics import MetricWriter, TrainLog, compile_seconds
from resnet_jax.training.state import TrainState, create_train_state, step_of
from resnet_jax.training.stops import Agreement, Stops, is_out_of_memory, out_of_memory


def model_from_config(
    config: ml_collections.ConfigDict, num_classes: int, layout: batch_layout.BatchLayout | None = None
) -> Any:
    """The configured model (`config.model`, `config.model_kwargs`, `config.half_precision`), its
    batch-norm groups those of `layout` (default: `config`'s, `batch_layout.from_config`)."""
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    kwargs = config.model_kwargs.to_dict()
    group = (layout or batch_layout.from_config(config)).bn_group_size
    if group:
        kwargs["bn_group_size"] = group
    return models.create(config.model, num_classes=num_classes, dtype=dtype, **kwargs)


def _resume_or_initialise(
    state: TrainState, ckpt: Checkpointer, metadata: dict[str, Any], config: ml_collections.ConfigDict, mesh: Any
) -> TrainState:
    """The newest readable checkpoint of the workdir if any (of the same model,
    batch size, classes and data: `check_resumable`; damaged ones are set aside),
    else ``config.init_from``'s variables if set (one member), else `state` itself."""
    check = functools.partial(check_resumable, current=metadata, where=ckpt.directory)
    resumed = restore_newest(ckpt, state, check)
    if resumed is not None:
        state = resumed
        if jax.process_index() == 0:
            print(f"Resumed from {ckpt.directory} at step {step_of(state)}.")
    elif config.init_from:
        state, report = load_pretrained(state, config.init_from, mesh)  # one member: its network's state
        if jax.process_index() == 0:
            print(report)
    return state


def _announce(
    config: ml_collections.ConfigDict, workdir: str, state: TrainState, info: Any, total_steps: int, members: Any,
    steps_per_epoch: int,
) -> None:
    """Saves the resolved config into the workdir and prints what will run."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    except OSError as e:
        raise cannot_write(path, e) from None
    network = jax.eval_shape(functools.partial(population.member, size=members.size, k=0), state.variables())
    print(
        f"{config.model}: {models.count_params(network):,} parameters, "
        f"{info.num_classes} classes, {info.num_train:,} train / {info.num_eval:,} eval examples, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), {total_steps:,} steps of {config.batch_size}."
    )
    if config.data.get("progressive_resizing"):
        sizes = resolution.training_sizes(config.data, -(-total_steps // steps_per_epoch))
        print(f"Progressive resizing: training at {', '.join(map(str, sizes))} px, one compilation of the step each.")
    if members.size > 1:
        how = {"vmap": "vmapped (the same kernels)", "loop": "looped (one after another)"}
        print(f"{members.size} networks ({', '.join(members.names())}) train together in one step, "
              f"{how[parallel.member_batching(config.member_batching)]}; each one's metrics and curves go to its "
              f"folder in {workdir}.")  # fmt: skip


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.model` on `config.data`, evaluating every epoch and
    checkpointing into `workdir`; resumes from the latest checkpoint there.
    A population (``config.sweep`` and/or ``config.num_seeds > 1``) trains
    together (`resnet_jax.training.population`).

    Returns the last evaluation metrics (with ``"ema"`` ones when EMA is on);
    for a population, their means with each member's own under ``"per_member"``.

    Raises:
      ConfigError: a field of `config` cannot work (`config_check.check`):
        raised first, before anything is read or written.
      Preempted: SIGTERM stopped training before its last step (after a save;
        one during an evaluation abandons it, and the resumed run makes it first).
        In a multi-process run every process raises it, at the same step,
        whichever processes got the signal (`stops.Agreement`).
      Interrupted: Ctrl-C stopped training before its last step (after a save).
      StoppedNow: a second Ctrl-C (or one before training began) stopped the
        run at once, saving nothing.
      WorkdirBusyError: another process is training in `workdir`.
      WorkdirWriteError: `workdir` (or its checkpoints/) cannot be written.
      DivergedError: the training loss went above the divergence bound or is
        not finite; nothing after it was saved.
      CheckpointWriteError: a checkpoint could not be written (a full disk).
      OutOfMemoryError: the step or the evaluation does not fit the device.
    """
    config_check.check(config)  # a config error ends the run here: nothing read, nothing written
    with WorkdirLock(workdir), Stops() as stops:  # from the start: SIGTERM while loading is kept
        try:
            return _train_and_evaluate(config, workdir, stops)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            error = out_of_memory(e, config, evaluating=False)
        raise error  # out of the except block: not chained to XLA's error and the frames it holds


@dataclass(frozen=True)
class Setup:
    """What a run is built from, before any checkpoint is read: the population,
    the pipeline, the model, the step's options, each member's learning-rate
    schedule (for the log) and the initial state (held as `population.stored` holds it)."""

    members: population.Population
    pipeline: Any
    model: Any
    options: steps.StepOptions
    total_steps: int
    schedules: list[Callable[[int], Any]]
    state: TrainState

    def compile_step(self, member_batching: str = "auto", steps_per_call: int = 1) -> Callable:
        """The run's compiled train step (`compiled.compile_train_step`)."""
        hp = self.members.hyperparameters()
        return compile_train_step(self.options, self.pipeline, hp, self.members.size, member_batching, steps_per_call)


def setup(config: ml_collections.ConfigDict, mesh: Any) -> Setup:
    """The `Setup` of a resolved, checked `config` on `mesh` (reads the data's description, not its images)."""
    members = population.from_config(config)
    layout = batch_layout.from_config(config, jax.process_count())  # read by the pipeline, model and step
    pipeline = make_pipeline(config, mesh, list(members.seeds), layout)
    info = pipeline.info
    model = model_from_config(config, info.num_classes, layout)
    steps_per_epoch = pipeline.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {info.num_train} training examples")
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    schedules = [
        optim.learning_rate_schedule(config, steps_per_epoch, total_steps, hp) for hp in members.swept_values()
    ]
    options = step_options(config, model, info.num_classes, members, steps_per_epoch, total_steps, layout)
    use_ema = max((config.ema_decay, *members.swept.get("ema_decay", ()))) > 0
    tx = options.make_tx(members.swept_values()[0])  # the state's structure (each member's values are traced)
    state = create_train_state(model, tx, info.image_size, members.seeds, mesh, use_ema)
    return Setup(members, pipeline, model, options, total_steps, schedules, state)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stops: Stops) -> dict[str, Any]:
    mesh = parallel.make_mesh()
    config = config.copy_and_resolve_references()
    config.eval_batch_size = parallel.fit_eval_batch_size(config.eval_batch_size, mesh)
    use_pretrained_normalization(config)
    saved = newest_metadata(workdir)
    if saved is not None:  # a checkpoint this config may not resume: refused before the data is read
        check_resumable(saved, run_metadata(config), os.path.join(os.path.abspath(workdir), "checkpoints"))
    built = setup(config, mesh)
    members, pipeline, total_steps, state = built.members, built.pipeline, built.total_steps, built.state
    info = pipeline.info
    metadata = run_metadata(config, info.class_names, info.num_train)
    data_iterator = getattr(pipeline, "data_iterator", None)  # Grain's: saved and restored with the state
    ckpt = Checkpointer(
        workdir, config.keep_checkpoints, async_save=config.async_checkpoints, data_iterator=data_iterator
    )
    ckpt.prepare_to_train()
    state = _resume_or_initialise(state, ckpt, metadata, config, mesh)
    if jax.process_index() == 0:
        _announce(config, workdir, state, info, total_steps, members, pipeline.steps_per_epoch)

    train_step = built.compile_step(
        config.member_batching, _check_steps_per_call(config, pipeline, total_steps, step_of(state))
    )
    resumed_at = step_of(state)  # the records of later steps are written again: the writers drop them
    writers = [MetricWriter(d, after=resumed_at) for d in population.member_dirs(workdir, members)]
    agreed = Agreement(stops) if jax.process_count() > 1 else None  # all processes stop at the same step
    stop = (lambda: stops.requested) if agreed is None else agreed  # read before each evaluation batch
    run = _Run(
        config, workdir, members, pipeline, ckpt, metadata, total_steps, stops, agreed,
        evaluate=make_evaluator(built.model, config, info.num_classes, mesh, members.size, stop),
        log=TrainLog(writers, config.batch_size, lambda step: [float(s(step)) for s in built.schedules],
                     built.options.max_loss, parallel.replicated(mesh)),
    )  # fmt: skip
    try:
        return run.train(state, train_step)
    except StoppedNow as e:
        ckpt.wait()  # a save under way is finished: no partial folder, nothing lost
        if not stops.requested:
            raise  # before training began: its message is whole
        kept = ckpt.latest_step()
        where = f"the latest checkpoint is step {kept} in {ckpt.directory}" if kept is not None else "no checkpoint"
        raise StoppedNow(f"{e}, saving nothing new; {where}; the same command resumes") from None
    finally:
        if data_iterator is not None:
            data_iterator.close()  # its worker processes and their shared memory, on every way out
        for writer in run.log.writers:
            writer.close()
        ckpt.wait()
        ckpt.close()


def step_options(
    config: ml_collections.ConfigDict, model: Any, num_classes: int, members: population.Population,
    steps_per_epoch: int, total_steps: int, layout: batch_layout.BatchLayout | None = None,
) -> steps.StepOptions:
    """The train step's options for `config` (resolved), built once; its mixing chunks
    (and micro-batches) those of `layout` (default: `config`'s, `batch_layout.from_config`)."""
    layout = layout or batch_layout.from_config(config)

    def make_tx(hp: dict[str, Any]) -> optax.GradientTransformation:
        return optim.make_optimizer(config, optim.learning_rate_schedule(config, steps_per_epoch, total_steps, hp), hp)

    return steps.StepOptions(
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        dtype=model.dtype,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay,
        max_loss=config.max_train_loss if config.max_train_loss > 0 else steps.divergence_bound(num_classes),
        make_tx=make_tx,
        transform=batch_augment.batch_transform(config, num_classes, members.swept, layout.mixup_chunk),
        loss=config.loss,
        bce_target_threshold=config.bce_target_threshold,
        freeze_bn=config.freeze_bn,
        ema_every=config.ema_every_steps,
        dropout=config.model_kwargs.get("drop_path_rate", 0.0) > 0,
        micro_batches=layout.micro_batches,
    )


def _check_steps_per_call(config: ml_collections.ConfigDict, pipeline: Any, total_steps: int, step: int) -> int:
    """``config.steps_per_call``, checked also against the cadences the data and the state set."""
    known = {"steps per epoch": pipeline.steps_per_epoch, "num_train_steps": total_steps, "the step resumed at": step}
    return config_check.steps_per_call(config, known)


class _Run:
    """The flat training loop: one compiled step per iteration and periodic
    actions, each on its own cadence: the log (``log_every_steps``), evaluation
    (``eval_every_epochs`` or ``eval_every_steps``), checkpoints
    (``checkpoint_every_steps`` / ``checkpoint_every_minutes``, at evaluations
    with ``checkpoint_on_eval``, and always at the end and on SIGTERM or Ctrl-C), curves
    (at an evaluation, at most every ``curves_every_seconds``). A stop is this
    process's flag (`Stops.requested`), or in a multi-process run (`agreed`) the
    one all processes agree on, read at the same steps and batches of each."""

    def __init__(self, config, workdir, members, pipeline, ckpt, metadata, total_steps, stops, agreed, evaluate, log):
        self.config, self.workdir, self.members, self.pipeline = config, workdir, members, pipeline
        self.ckpt, self.metadata, self.total_steps, self.stops = ckpt, metadata, total_steps, stops
        self.agreed: Agreement | None = agreed
        self.evaluate, self.log = evaluate, log
        self.dirs = population.member_dirs(workdir, members)
        self.every = _Cadence.of(config, pipeline.steps_per_epoch, total_steps)
        self.results: dict[str, Any] = {}
        self.last_save = self.last_curves = time.time()
        self.abandoned: int | None = None  # the step whose evaluation a stop abandoned
        if agreed is not None:  # process 0's clock decides a time-based save for all (`Agreement`)
            agreed.clock_due = self._clock_due

    def train(self, state: TrainState, train_step: Callable) -> dict[str, Any]:
        spe, total = self.pipeline.steps_per_epoch, self.total_steps
        step, start_time = step_of(state), time.time()
        if self._evaluation_pending(step) and not self._evaluate(state, step):
            stop = self._stopped()
            raise (Interrupted if stop == "Ctrl-C" else Preempted)(
                f"{stop}: stopped the evaluation of step {step} (its checkpoint is in "
                f"{self.ckpt.directory}); the same command resumes, evaluating step {step} first"
            )
        if step >= total and not self.results:
            return self._finished(step)
        self.stops.training = True  # from here a Ctrl-C saves first
        self.log.restart_clock()
        agreed = self.agreed  # read once a step, as `stop`: the value the save and the exit both act on
        stop = self.stops.requested if agreed is None else agreed()
        while step < total and not stop:
            epoch = step // spe
            n = self.every.steps_per_call  # the steps of one call (one item for them all)
            with _progress(epoch, min((epoch + 1) * spe, total) - step) as bar:  # closed on any way out: an
                for item in itertools.islice(self.pipeline.train_epoch(epoch, step % spe), 0, None, n):  # error
                    called = time.perf_counter()  # line starts a line
                    state, self.log.window = train_step(state, self.log.window, item)
                    self.log.added(n, time.perf_counter() - called)
                    step += n  # counted here: reading the state's step back would wait for the device
                    bar.update(n)
                    stop = self._periodic(state, step, self.stops.requested if agreed is None else agreed())
                    if step == total or step % spe == 0 or stop:
                        break
        if stop and (step < total or self.abandoned == step):
            self.ckpt.wait()
            if self.ckpt.latest_step() == step:
                what = f"saved a checkpoint at step {step} of {total} in {self.ckpt.directory}"
                if self.abandoned == step:
                    what = f"stopped the evaluation of step {step} and {what}"
            else:  # SIGTERM came while the run was starting: nothing trained, nothing to save
                what = f"stopped before training (at step {step} of {total}); nothing new to save"
            error = Interrupted if stop == "Ctrl-C" else Preempted
            first = f", evaluating step {step} first" if self.abandoned == step else ""
            raise error(f"{stop}: {what}; the same command resumes{first}")
        if jax.process_index() == 0 and self.members.size > 1:
            print("Population report: " + ", ".join(population_report.write_report(self.workdir, self.members)))
        if jax.process_index() == 0 and self.results:
            ev = self.results["eval"]
            print(
                f"Done: step {step}, eval top-1 {ev['top1']:.4f}, top-5 {ev['top5']:.4f}, loss {ev['loss']:.4f}"
                f"{' (means over the members)' if self.members.size > 1 else ''}, {time.time() - start_time:.0f}s. "
                f"Workdir: {self.workdir}"
            )
        return self.results

    def _finished(self, step: int) -> dict[str, Any]:
        """A run resumed at or past its last step trains nothing: says so, and
        returns the last evaluation its checkpoint holds."""
        metrics = self.ckpt.metadata(step).get("metrics") or {}
        if jax.process_index() == 0:
            last = f"; its last evaluation: top-1 {metrics['top1']:.4f}" if "top1" in metrics else ""
            print(
                f"Nothing to train: {self.workdir} is at step {step} of {self.total_steps}{last}. "
                "A larger num_epochs (or num_train_steps) trains on."
            )
        return metrics

    def _evaluation_pending(self, step: int) -> bool:
        """Whether the checkpoint resumed at `step` lacks the evaluation due there
        (a stop abandoned it, and the checkpoint was saved without it): made first."""
        return 0 < step <= self.total_steps and self.every.evaluates(step) and not (
            self.ckpt.metadata(step).get("metrics")
        )

    def _clock_due(self) -> bool:
        """Whether ``checkpoint_every_minutes`` have passed since the last save, by this process's clock."""
        return self.every.save_seconds > 0 and time.time() - self.last_save >= self.every.save_seconds

    def _periodic(self, state: TrainState, step: int, stop: str | None) -> str | None:
        """The actions due after `step` (`stop`: SIGTERM or Ctrl-C came, save now);
        returns `stop`, or the stop that came during the evaluation and abandoned
        it (the state is then saved without it, and the resumed run makes it)."""
        every = self.every
        evaluates = every.evaluates(step)
        clock = self._clock_due() if self.agreed is None else self.agreed.take_save_due()
        saves = (
            step == every.total_steps
            or stop
            or (every.save_steps > 0 and step % every.save_steps == 0)
            or clock
            or (evaluates and every.save_on_eval)
        )
        if step % every.log == 0 or evaluates or saves:
            try:
                self.log.flush(step, now=evaluates or saves)  # before a save: nothing diverged is kept
            except DivergedError as e:
                self.ckpt.wait()
                kept = self.ckpt.latest_step()
                where = f"step {kept} stays the latest checkpoint" if kept is not None else "no checkpoint exists"
                raise DivergedError(f"{e}; {where}") from None
            self.ckpt.check_saved()
        if evaluates and not self._evaluate(state, step):
            stop, evaluates, saves, self.abandoned = self._stopped(), False, True, step
        if saves:
            with self.stops.saving():
                self.ckpt.save(state, self.metadata, self.results.get("eval") if evaluates else None)
            self.last_save = time.time()
        if evaluates or saves:  # each waited for the device: the next window starts from an idle one
            self.log.restart_clock()
        return stop

    def _stopped(self) -> str | None:
        """The stop that abandoned an evaluation: this process's, or the agreed one (multi-process)."""
        return self.stops.requested if self.agreed is None else self.agreed.value

    def _evaluate(self, state: TrainState, step: int) -> bool:
        """Evaluates `state`, records it and keeps it as the run's results; False
        (nothing recorded) when a stop abandoned it."""
        try:
            per_member = _evaluate_all(state, self.evaluate, self.pipeline, self.config)
        except Exception as e:
            if is_out_of_memory(e):
                raise out_of_memory(e, self.config, evaluating=True) from None
            raise
        if per_member is None:
            return False
        for writer, member_results in zip(self.log.writers, per_member):
            for split, metrics in member_results.items():
                writer.write(step, split, metrics)
        self.results = {split: population.combine([r[split] for r in per_member]) for split in per_member[0]}
        if jax.process_index() != 0:
            return True
        tqdm.write(_summary_line((step - 1) // self.pipeline.steps_per_epoch, step, self.log.last, self.results))
        every = self.config.curves_every_seconds
        if every >= 0 and (step >= self.total_steps or time.time() - self.last_curves >= every):
            for d in self.dirs:  # ~1 s with 164 evaluations: not at each one of a fast GPU run
                plot.write_curves(d)
            self.last_curves = time.time()
        return True


def _progress(epoch: int, steps: int) -> tqdm:
    return tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=jax.process_index() != 0,
        mininterval=0.5 if sys.stderr.isatty() else 60,  # a log file gets a line a minute, not one a step
    )


@dataclass(frozen=True)
class _Cadence:
    """When the periodic actions come, read from the config once (a ConfigDict
    lookup costs microseconds, too many for every step)."""

    steps_per_epoch: int
    total_steps: int
    steps_per_call: int
    log: int
    eval_steps: int
    eval_epochs: int
    save_steps: int
    save_seconds: float
    save_on_eval: bool

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> _Cadence:
        return cls(steps_per_epoch, total_steps, int(config.steps_per_call), int(config.log_every_steps),
                   int(config.eval_every_steps), int(config.eval_every_epochs), int(config.checkpoint_every_steps),
                   60.0 * config.checkpoint_every_minutes, bool(config.checkpoint_on_eval))  # fmt: skip

    def evaluates(self, step: int) -> bool:
        """Evaluation comes at the last step, and every ``eval_every_steps`` steps
        if that is > 0, else every ``eval_every_epochs`` epochs."""
        if step >= self.total_steps:
            return True
        if self.eval_steps > 0:
            return step % self.eval_steps == 0
        return step % self.steps_per_epoch == 0 and (step // self.steps_per_epoch) % self.eval_epochs == 0


@contextlib.contextmanager
def _closed_after(batches: Iterator[Any]) -> Iterator[Iterator[Any]]:
    """`batches`, closed at the end however it ends (a generator over Grain's
    worker processes stops them; an iterator without ``close`` is left be)."""
    try:
        yield batches
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _evaluate_all(
    state: TrainState, evaluate: Callable, pipeline: Any, config: ml_collections.ConfigDict
) -> list[dict[str, dict]] | None:
    """``[{"eval": metrics, "eval_ema": metrics}]``, one per member; None when a stop abandoned it."""
    t0, compiled = time.perf_counter(), compile_seconds()  # the training before was waited for (TrainLog.flush)
    with _closed_after(pipeline.eval_batches()) as batches:
        evals = evaluate(state.variables(), batches)  # returns floats: the evaluation is over
    seconds = time.perf_counter() - t0 - (compile_seconds() - compiled)  # its first call's compilation left out
    if evals is None:
        return None
    emas = None
    if state.ema_params is not None:
        with _closed_after(pipeline.eval_batches()) as batches:
            emas = evaluate(state.variables(ema=True), batches)
        if emas is None:
            return None
    out = []
    for k, ev in enumerate(evals):
        ev = {**ev, "seconds": seconds, "images_per_sec": ev["count"] * len(evals) / seconds}
        out.append({"eval": ev} if emas is None else {"eval": ev, "eval_ema": emas[k]})
    return out


def _summary_line(epoch: int, step: int, train: list[dict[str, float]], results: dict[str, dict]) -> str:
    ev, line = results["eval"], f"epoch {epoch + 1:3d} step {step:6d} | "
    if train:  # none yet in a resumed run's first evaluation, of the step it resumed at
        tr = train[0] if len(train) == 1 else population.combine(train)
        line += (f"train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f} lr {tr['lr']:.4g} "
                 f"{tr['images_per_sec'] * len(train):.0f} img/s | ")  # fmt: skip
    line += f"eval loss {ev['loss']:.4f} top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} ({ev['images_per_sec']:.0f} img/s)"
    if "per_member" in ev:
        line += " | members' top1 " + " ".join(f"{r['top1']:.4f}" for r in ev["per_member"])
    if "eval_ema" in results:
        line += f" | ema top1 {results['eval_ema']['top1']:.4f}"
    return line
