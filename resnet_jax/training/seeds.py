"""Several seeds of one recipe trained together: one train state stacked on a
leading axis of K, one compiled step.

``config.num_seeds = K`` trains seeds ``config.seed, ..., config.seed + K - 1``
in one process (``config.seed_batching``: in the same kernels with `jax.vmap`,
the default on GPUs and TPUs, or one after another inside the compiled step,
the default on CPUs: `resnet_jax.parallel.over_seeds`). Each seed gets exactly what its own run would get: its
initialisation, data order, augmentation and batch-norm statistics. The
checkpoints in ``<workdir>/checkpoints`` hold all K seeds together; each seed's
metrics, TensorBoard events and curves go to ``<workdir>/seed<k>/``, and
``resnet_jax.restore("<workdir>/seed<k>")`` (or ``restore(workdir, seed=k)``)
takes one seed out. With K = 1 nothing is stacked: the state, checkpoints and
workdir are those of an ordinary run.
"""

from __future__ import annotations

import os
import re
import statistics
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax import parallel
from resnet_jax.errors import ConfigError

SEED_DIR = "seed{}"


def seed_values(config: ml_collections.ConfigDict) -> list[int]:
    """The seeds a config trains: ``seed, seed + 1, ..., seed + num_seeds - 1``."""
    return [int(config.seed) + k for k in range(int(config.num_seeds))]


def check(config: ml_collections.ConfigDict) -> None:
    """Refuses seed packing where it cannot run: K < 1, a pipeline other than
    the on-device one (each seed needs its own data order), or a start from
    pretrained weights."""
    k = int(config.num_seeds)
    parallel.seed_batching(config.seed_batching)  # a wrong name is refused here, before any work
    if k < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {k}")
    if k > 1 and config.data.pipeline != "device":
        raise ConfigError(
            f"num_seeds={k} trains the seeds in one step, which needs data.pipeline='device' "
            f"(each seed draws its own batches on the device), not {config.data.pipeline!r}"
        )
    if k > 1 and config.init_from:
        raise ConfigError(f"num_seeds={k} starts every seed from its own initialisation; init_from needs num_seeds=1")


def seed_workdirs(workdir: str, num_seeds: int) -> list[str]:
    """Where each seed's metrics and curves go: the workdir itself for one
    seed, ``<workdir>/seed<k>`` for several."""
    if num_seeds == 1:
        return [workdir]
    return [os.path.join(workdir, SEED_DIR.format(k)) for k in range(num_seeds)]


def packed_parent(workdir: str) -> tuple[str, int] | None:
    """``(run workdir, k)`` if `workdir` is the ``seed<k>`` folder of a run that
    trained several seeds together (it holds no checkpoints of its own)."""
    found = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.normpath(workdir)))
    parent = os.path.dirname(os.path.normpath(workdir))
    if found and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        if os.path.isdir(os.path.join(parent, "checkpoints")):
            return parent, int(found.group(1))
    return None


def take(tree: Any, k: int) -> Any:
    """Seed `k` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[k], tree)


def per_seed(metrics: dict[str, Any], num_seeds: int) -> list[dict[str, Any]]:
    """``{name: [K] values}`` (or scalars for one seed) -> one dict per seed."""
    host = {k: np.asarray(jax.device_get(v)) for k, v in metrics.items()}
    if num_seeds == 1:
        return [host]
    return [{name: v[k] for name, v in host.items()} for k in range(num_seeds)]


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of each number in their evaluation metrics, with the
    seeds' own metrics under ``"per_seed"`` (what the checkpoint's metadata keeps)."""
    if len(results) == 1:
        return results[0]
    numbers = [k for k, v in results[0].items() if isinstance(v, (int, float))]
    return {**{k: statistics.mean(r[k] for r in results) for k in numbers}, "per_seed": results}
