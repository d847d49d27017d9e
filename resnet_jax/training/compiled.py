"""The one compiled train step of a run: `jax.jit` of a pure step function
(`steps.train_step`) with the train state donated, over the device mesh, fed
by either kind of pipeline (`resnet_jax.data.pipeline`):

* host batches (tf.data, Grain): this process's numpy share of each global
  batch becomes a global array sharded over the mesh (`parallel.shard_batch`);
* an on-device pipeline: the step takes the epoch's inputs (permutation, key)
  and makes its batch inside, `make_batch(data, *inputs, state.step % steps
  per epoch)`: nothing goes from the host per step, and a restored state
  resumes at its own batch.

Seeds trained together (a state stacked on a leading axis) run in the same
step, vmapped or looped (`parallel.over_seeds`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data.pipeline import Batch, OnDevicePipeline, Pipeline

StepFn = Callable[[Any, Batch], tuple[Any, dict[str, jax.Array]]]
TrainStep = Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]]


def compile_train_step(step_fn: StepFn, pipeline: Pipeline, seed_batching: str = "auto") -> TrainStep:
    """``train(state, item)`` for each item of ``pipeline.train_epoch``: `step_fn`
    (a pure ``(state, batch) -> (state, metrics)``) compiled once with the state donated."""
    if isinstance(pipeline, OnDevicePipeline):
        return _on_device(step_fn, pipeline, seed_batching)
    return compile_host_step(step_fn, pipeline.mesh)


def compile_host_step(step_fn: StepFn, mesh: Mesh) -> TrainStep:
    """``jit(step_fn)`` with the state donated, fed this process's host batches."""
    jitted = jax.jit(step_fn, donate_argnums=0)
    return lambda state, batch: jitted(state, parallel.shard_batch(batch, mesh))


def _on_device(step_fn: StepFn, pipeline: OnDevicePipeline, seed_batching: str) -> TrainStep:
    steps_per_epoch = pipeline.steps_per_epoch

    def step(state: Any, data: Batch, *inputs: Any) -> tuple[Any, dict[str, jax.Array]]:
        return step_fn(state, pipeline.make_batch(data, *inputs, state.step % steps_per_epoch))

    if pipeline.num_seeds > 1:  # stacked states and epoch inputs; the same data
        step = parallel.over_seeds(step, (0, None, 0, 0), seed_batching)
    jitted = jax.jit(step, donate_argnums=0)
    return lambda state, inputs: jitted(state, pipeline.data, *inputs)
