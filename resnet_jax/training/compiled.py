"""The one compiled train step of a run: `jax.jit` of a pure step function
(`steps.train_step`) with the train state donated, over the device mesh, fed
by either kind of pipeline (`resnet_jax.data.pipeline`):

* host batches (tf.data, Grain): this process's numpy share of each global
  batch becomes a global array sharded over the mesh (`parallel.shard_batch`);
* an on-device pipeline: the step takes the epoch's inputs (permutation, key)
  and makes its batch inside, `make_batch(data, *inputs, state.step % steps
  per epoch)`: nothing goes from the host per step, and a restored state
  resumes at its own batch.

The members of a population (a state stacked on a leading axis, with their
own hyperparameters) run in the same step, vmapped or looped
(`population.over_members`); host batches are shared by the members (they
share a seed), an on-device pipeline draws each member's own. The step also
adds its metrics to the log window's running sums (`metrics.accumulate`), so
that logging costs the loop no call of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data.pipeline import Batch, OnDevicePipeline, Pipeline
from resnet_jax.training import population
from resnet_jax.training.metrics import Window, accumulate

StepFn = Callable[[Any, Batch, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]
TrainStep = Callable[[Any, Window, Any], tuple[Any, Window]]


def compile_train_step(
    step_fn: StepFn,
    pipeline: Pipeline,
    hp: dict[str, jax.Array] | None = None,
    size: int = 1,
    seed_batching: str = "auto",
    steps_per_call: int = 1,
) -> TrainStep:
    """``train(state, window, item) -> (state, window)`` for each item of
    ``pipeline.train_epoch``: `step_fn` (a pure ``(state, batch, hp) -> (state,
    metrics)``) compiled once, over the `size` members of a population with
    their hyperparameters `hp` (per-member arrays; empty for one member), with
    the state donated (not the log window: a few floats, and the loop starts
    every window from the same zeros, `TrainLog`). With an on-device pipeline,
    `steps_per_call` > 1 runs that many steps in one call (`jax.lax.scan`; the
    caller passes one item for them all)."""
    hp = hp or {}
    if isinstance(pipeline, OnDevicePipeline):
        steps_per_epoch = pipeline.steps_per_epoch

        def one(state: Any, hp: dict, data: Batch, *inputs: Any) -> tuple[Any, dict[str, jax.Array]]:
            return step_fn(state, pipeline.make_batch(data, *inputs, state.step % steps_per_epoch), hp)

        member = population.over_members(one, (0, 0, None, 0, 0), size, seed_batching)
    else:
        member = population.over_members(lambda s, h, b: step_fn(s, b, h), (0, 0, None), size, seed_batching)

    def one_step(state: Any, window: Window, *args: Any) -> tuple[Any, Window]:
        state, metrics = member(state, hp, *args)
        return state, accumulate(window, metrics)

    def step(state: Any, window: Window, *args: Any) -> tuple[Any, Window]:
        if steps_per_call == 1:
            return one_step(state, window, *args)
        body = lambda carry, _: (one_step(*carry, *args), None)  # noqa: E731
        return jax.lax.scan(body, (state, window), None, length=steps_per_call)[0]

    jitted = jax.jit(step, donate_argnums=0)
    if isinstance(pipeline, OnDevicePipeline):
        return lambda state, window, inputs: jitted(state, window, pipeline.data, *inputs)
    return _host(jitted, pipeline.mesh)


def _host(jitted: Callable, mesh: Mesh) -> TrainStep:
    return lambda state, window, batch: jitted(state, window, parallel.shard_batch(batch, mesh))


def compile_host_step(step_fn: Callable[[Any, Batch], tuple[Any, Any]], mesh: Mesh) -> Callable[[Any, Batch], Any]:
    """A bare ``jit(step_fn)`` over host batches, the state donated: one network,
    no log window (tests and benchmarks compare the loop against it)."""
    jitted = jax.jit(step_fn, donate_argnums=0)
    return lambda state, batch: jitted(state, parallel.shard_batch(batch, mesh))
