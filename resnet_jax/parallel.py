"""Data parallelism: the device mesh, batch sharding and multi-host start-up.

One `jax.jit`-compiled step runs over a 1-D mesh of every device of every
process, with axis ``data``: batches are sharded along their first dimension,
the train state is replicated. Because the step sees global arrays, batch-norm
means are over the global batch (synchronised BN) without any `axis_name`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.errors import ConfigError, warn

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    peer_timeout: float | None = None,
) -> None:
    """Starts JAX's multi-controller runtime when there is more than one process.

    With no arguments, `jax.distributed.initialize()` detects TPU pod slices,
    SLURM and Open MPI clusters itself; on a single machine with no such
    environment nothing is done. Explicit arguments (or the environment
    variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)
    start a cluster by hand, e.g. two processes on localhost.

    With more than one process it also starts the lost-process watch
    (`resnet_jax.peers`): when a process dies, the others exit within about
    1 s (a killed process), or within `peer_timeout` (default 20 s, or the
    environment's RESNET_JAX_PEER_TIMEOUT_S; 0 turns the watch off) when it
    stops answering, printing one line, ``error: lost process K of N (...);
    restart all processes to resume from the last checkpoint``, with exit
    status 75, instead of hanging ~100 s until jaxlib aborts them.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")):
        jax.distributed.initialize()
    else:
        return
    _watch_peers(peer_timeout)


def _watch_peers(timeout: float | None) -> None:
    """Starts `resnet_jax.peers`' watch from the state of ``jax.distributed`` (read
    without starting the XLA backend, so that config updates may still follow)."""
    from resnet_jax import peers

    try:
        from jax._src import distributed as jax_distributed

        state = jax_distributed.global_state
        client, process_id, num_processes = state.client, int(state.process_id), int(state.num_processes)
        address = getattr(state, "coordinator_address", None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
    except (ImportError, AttributeError, TypeError) as e:  # another jax: run without the watch
        warn(f"no lost-process watch ({e})")
        return
    if client is not None:
        peers.start(client, address, process_id, num_processes, timeout)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (batch) dimension over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises a clear error unless `batch_size` divides over devices and processes."""
    devices = mesh.devices.size
    if batch_size <= 0 or batch_size % devices:
        raise ConfigError(
            f"{what}={batch_size} does not divide over {devices} devices; use a multiple of {devices} "
            f"(e.g. {max(devices, batch_size // devices * devices)})"
        )
    if batch_size % jax.process_count():
        raise ConfigError(f"{what}={batch_size} does not divide over {jax.process_count()} processes")


def fit_eval_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the devices, said once on the console.

    Evaluation pads and masks its batches, so its batch size changes no result:
    a config's eval batch size then runs unchanged on any number of devices.
    """
    if batch_size <= 0:
        raise ConfigError(f"eval_batch_size={batch_size} must be positive")
    devices = mesh.devices.size
    fitted = -(-batch_size // devices) * devices
    if fitted != batch_size and jax.process_index() == 0:
        print(
            f"eval_batch_size={batch_size} does not divide over {devices} devices: evaluating in batches of "
            f"{fitted} (padded and masked, so the metrics are the same)."
        )
    return fitted


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch -> global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree (the same on every process) on every device."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def gather_from_processes(value: int | Sequence[int]) -> np.ndarray:
    """`value` (an int, or a few) of every process, as an array indexed by process (no-op on one process)."""
    if jax.process_count() == 1:
        return np.asarray([value])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(value)))


def member_batching(how: str = "auto") -> str:
    """``config.member_batching`` resolved: ``"auto"`` is ``"loop"`` on CPUs and
    ``"vmap"`` on GPUs and TPUs (see `over_members`)."""
    if how == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    if how not in ("vmap", "loop"):
        raise ConfigError(f"unknown member_batching {how!r}; use 'auto', 'vmap' or 'loop'")
    return how


def over_members(fn: Callable[..., Any], in_axes: Sequence[int | None], how: str = "auto") -> Callable[..., Any]:
    """`fn` applied to each population member of arguments stacked on a leading
    axis (``in_axes`` 0), the others shared (None), inside one compiled function;
    the results are stacked. ``"vmap"`` runs the members in the same kernels
    (a convolution with a group per member), ``"loop"`` one after another
    (unrolled); ``"auto"``: loop on CPUs, whose grouped convolutions are slow
    (docs/cpu.md), vmap on GPUs and TPUs. A single member is its one iteration
    of the loop, whatever `how`: the program of an unstacked network."""
    how = member_batching(how)

    def each(*args: Any) -> Any:
        pairs = list(zip(args, in_axes))
        count = jax.tree_util.tree_leaves([a for a, axis in pairs if axis == 0])[0].shape[0]
        if how == "vmap" and count > 1:
            return jax.vmap(fn, in_axes=tuple(in_axes))(*args)
        outs = [
            fn(*[jax.tree_util.tree_map(lambda x, k=k: x[k], a) if axis == 0 else a for a, axis in pairs])
            for k in range(count)
        ]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

    return each
