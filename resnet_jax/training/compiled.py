"""The one compiled train step of a run: `jax.jit` of a pure step function
(`steps.train_step`) with the train state donated, over the device mesh, fed
by either kind of pipeline (`resnet_jax.data.pipeline`):

* host batches (tf.data, Grain): this process's numpy share of each global
  batch becomes a global array sharded over the mesh (`parallel.shard_batch`);
* an on-device pipeline: the step takes the epoch's inputs (permutation, key)
  and makes its batch inside, `make_batch(data, *inputs, state.step % steps
  per epoch)`: nothing goes from the host per step, and a restored state
  resumes at its own batch.

Every run is a population of K >= 1 members (a state stacked on a leading
axis, their swept hyperparameters traced per member): the step runs them
vmapped or looped (`parallel.over_members`); host batches are shared by the
members (they share a seed), an on-device pipeline draws each member's own.
The step takes and returns the state as the loop holds it (`population.stored`:
one member's unstacked), adding the member axis inside.
The step also adds its metrics to the log window's running sums
(`metrics.accumulate`), so that logging costs the loop no call of its own.
With gradient accumulation (``options.micro_batches`` > 1) each micro-batch
is spread over the mesh's devices, as a whole batch is (`steps.train_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import parallel
from resnet_jax.data.pipeline import Batch, OnDevicePipeline, Pipeline
from resnet_jax.errors import ConfigError
from resnet_jax.training import population, steps
from resnet_jax.training.metrics import Window, accumulate

TrainStep = Callable[[Any, Window, Any], tuple[Any, Window]]


def compile_train_step(
    options: steps.StepOptions,
    pipeline: Pipeline,
    hp: dict[str, jax.Array],
    size: int,
    member_batching: str = "auto",
    steps_per_call: int = 1,
) -> TrainStep:
    """``train(state, window, item) -> (state, window)`` for each item of
    ``pipeline.train_epoch``: `steps.train_step` with `options`, compiled once,
    over the `size` members of a state (held as `population.stored` holds it)
    with their hyperparameters `hp` ([K] arrays of the swept fields,
    `population.Population.hyperparameters`), the state donated (not the log
    window: a few floats, and the loop starts every window from the same zeros,
    `TrainLog`). With an on-device pipeline,
    `steps_per_call` > 1 runs that many steps in one call (`jax.lax.scan`; the
    caller passes one item for them all). Its first call raises `ConfigError`
    where ``options.micro_batches`` makes micro-batches that do not divide
    over the mesh's devices."""
    k, devices = options.micro_batches, pipeline.mesh.devices.size
    if k > 1:  # each micro-batch over all the devices, as a whole batch is
        options = dataclasses.replace(options, micro_sharding=NamedSharding(pipeline.mesh, P(None, parallel.DATA_AXIS)))

    def train_step(state: Any, batch: Batch, hp: dict[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
        if k > 1:
            check_micro_batches(batch["label"].shape[0], k, devices)  # traced: the global batch's shape
        return steps.train_step(state, batch, hp, options)

    if isinstance(pipeline, OnDevicePipeline):
        steps_per_epoch = pipeline.steps_per_epoch

        def one(state: Any, hp: dict, data: Batch, *inputs: Any) -> tuple[Any, dict[str, jax.Array]]:
            return train_step(state, pipeline.make_batch(data, *inputs, state.step % steps_per_epoch), hp)

        member = parallel.over_members(one, (0, 0, None, 0, 0), member_batching)
    else:
        member = parallel.over_members(lambda s, h, b: train_step(s, b, h), (0, 0, None), member_batching)

    def one_step(state: Any, window: Window, *args: Any) -> tuple[Any, Window]:
        state, metrics = member(state, hp, *args)
        return state, accumulate(window, metrics)

    # The inputs as one tuple, not *args: JAX dispatches a function with *args and a donated
    # argument more slowly (docs/cpu.md, "The loop and the population").
    def step(state: Any, window: Window, args: tuple) -> tuple[Any, Window]:
        state = population.restacked(state, size)
        if steps_per_call == 1:
            state, window = one_step(state, window, *args)
        else:
            body = lambda carry, _: (one_step(*carry, *args), None)  # noqa: E731
            state, window = jax.lax.scan(body, (state, window), None, length=steps_per_call)[0]
        return population.stored(state, size), window

    jitted = jax.jit(step, donate_argnums=0)
    if isinstance(pipeline, OnDevicePipeline):
        return lambda state, window, inputs: jitted(state, window, (pipeline.data, *inputs))
    mesh = pipeline.mesh
    return lambda state, window, batch: jitted(state, window, (parallel.shard_batch(batch, mesh),))


def check_micro_batches(batch_size: int, micro_batches: int, devices: int) -> None:
    """Raises `ConfigError` unless each of the `micro_batches` micro-batches of
    a global batch of `batch_size` images spreads evenly over `devices` devices."""
    size = batch_size // micro_batches
    if micro_batches > 1 and size % devices:
        raise ConfigError(f"gradient_accumulation_steps={micro_batches} makes micro-batches of {size} images, which "
                          f"do not divide over {devices} devices; use fewer accumulation steps or more images a batch")
