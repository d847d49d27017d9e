"""A population: the members one run trains together in one compiled step,
differing in seed and in swept hyperparameters. Every run is one: an ordinary
run is a population of one member.

``config.sweep`` names a grid of hyperparameters, e.g.
``"learning_rate=0.05,0.1,0.2 weight_decay=1e-4,5e-4"`` (6 points), and
``config.num_seeds`` the seeds of each point (``seed ... seed + num_seeds - 1``):
the members are the grid times the seeds, in that order (the seed varies
fastest). Each member gets exactly what its own run would get: its
initialisation, data order, augmentation and batch-norm statistics are those of
its seed, its hyperparameters those of its grid point. Only per-run scalars can
be swept (`SWEEPABLE`): anything that changes shapes (model, batch size, image
size) needs runs of its own.

Inside every compiled function the train state of K >= 1 members is stacked
on a leading axis of K; the step runs them vmapped or looped
(``config.member_batching``, `parallel.over_members`), the swept values
entering it as traced per-member arrays (`Population.hyperparameters`). The
member axis is dropped only where data leaves the compiled code, by the
functions of this module: each member's metrics, TensorBoard events and curves
go to its folder (`member_dirs`: the workdir itself for one member;
``seed<k>`` when only seeds differ; else named by its values, e.g.
``learning_rate=0.1_weight_decay=0.0005_seed0``); its evaluation is its own
(`combine`); and between calls a one-member state is held as one network's,
unstacked (`stored`: also its checkpoint's layout, that of every checkpoint
written before populations), the compiled functions adding the axis on entry
and dropping it on exit (`restacked`, `stored`: free inside a program). The
state crosses JAX's call boundary at every step, and JAX dispatches a rank-5
array (a stacked conv kernel) more slowly than a rank-4 one (docs/cpu.md): a
one-member step takes exactly the arrays of one network.
``resnet_jax.restore("<workdir>/<member folder>")`` (or
``restore(workdir, member=k)``) takes one member out of a population's checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import parallel
from resnet_jax.errors import ConfigError

# Per-run scalars a population may sweep (config field -> what it is).
SWEEPABLE = {
    "learning_rate": "peak learning rate",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing",
    "momentum": "SGD momentum",
    "warmup_epochs": "warm-up length (epochs)",
    "ema_decay": "EMA decay",
    "mixup_alpha": "mixup's Beta(alpha, alpha)",
    "cutmix_alpha": "cutmix's Beta(alpha, alpha)",
    "mixup_prob": "probability of mixing a batch",
    "mixup_switch_prob": "probability of cutmix when both are on",
    "random_erasing": "probability of erasing an image",
    "randaugment_magnitude": "RandAugment's mean magnitude (0-10)",
}
SEED_DIR = "seed{}"


@dataclass(frozen=True)
class Population:
    """The members of a run: their seeds and swept values, in member order."""

    seeds: tuple[int, ...]  # the seed of each member
    swept: dict[str, tuple[float, ...]]  # field -> the value of each member (only swept fields)
    num_seeds: int  # seeds per grid point

    @property
    def size(self) -> int:
        return len(self.seeds)

    def values(self, k: int) -> dict[str, Any]:
        """Member `k`'s swept values and seed."""
        return {**{f: v[k] for f, v in self.swept.items()}, "seed": self.seeds[k]}

    def names(self) -> list[str]:
        """Each member's folder name: ``seed<j>`` (j: index among the seeds) when
        only seeds differ, else its swept values then ``seed<j>``."""
        names = []
        for k in range(self.size):
            values = "_".join(f"{f}={_short(v[k])}" for f, v in self.swept.items())
            seed = SEED_DIR.format(k % self.num_seeds)
            names.append(f"{values}_{seed}" if values else seed)
        return names

    def swept_values(self) -> list[dict[str, float]]:
        """Each member's swept values, on the host (empty dicts when nothing is swept)."""
        return [{f: v[k] for f, v in self.swept.items()} for k in range(self.size)]

    def hyperparameters(self) -> dict[str, jax.Array]:
        """The swept values as [K] arrays, the step's traced per-member input (the
        values of the fields not swept are the config's, constants of the step)."""
        return {f: jnp.asarray(v, jnp.float32) for f, v in self.swept.items()}

    def describe(self) -> list[dict[str, Any]]:
        """Each member's seed and values (what a checkpoint's metadata keeps)."""
        return [self.values(k) for k in range(self.size)]


def _short(value: float) -> str:
    return f"{value:g}"


def parse_sweep(text: str) -> dict[str, tuple[float, ...]]:
    """``"learning_rate=0.05,0.1 weight_decay=1e-4,5e-4"`` -> ``{field: values}``.

    Raises:
      ConfigError: a field that cannot be swept, a value that is not a number,
        a field given twice or with no values.
    """
    grid: dict[str, tuple[float, ...]] = {}
    for part in text.split():
        field, sep, values = part.partition("=")
        if not sep or not values:
            raise ConfigError(f"sweep: {part!r} is not field=value,value,...")
        if field not in SWEEPABLE:
            raise ConfigError(
                f"sweep: {field!r} cannot be swept in one run (it changes shapes or is not a per-run scalar); "
                f"sweepable: {', '.join(SWEEPABLE)}"
            )
        if field in grid:
            raise ConfigError(f"sweep: {field!r} is given twice")
        try:
            grid[field] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"sweep: {part!r} has a value that is not a number") from None
    return grid


def from_config(config: ml_collections.ConfigDict) -> Population:
    """The population `config` trains: ``sweep``'s grid times ``num_seeds`` seeds.

    Raises:
      ConfigError: a bad sweep (`parse_sweep`), fewer than one seed, several
        members on a host pipeline with several seeds (each seed needs its own
        data order: the on-device pipeline), several members started from
        pretrained weights, a swept EMA decay of 0 with others above (EMA is on
        or off for the whole population).
    """
    grid = parse_sweep(config.get("sweep", ""))
    num_seeds = int(config.num_seeds)
    parallel.member_batching(config.member_batching)  # a wrong name is refused here, before any work
    if num_seeds < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {num_seeds}")
    points = list(itertools.product(*grid.values())) or [()]
    size = len(points) * num_seeds
    if num_seeds > 1 and config.data.pipeline != "device":
        raise ConfigError(
            f"num_seeds={num_seeds} trains the seeds in one step, which needs data.pipeline='device' "
            f"(each seed draws its own batches on the device), not {config.data.pipeline!r}"
        )
    if size > 1 and config.init_from:
        raise ConfigError(f"a population of {size} starts every member from its own initialisation; "
                          "init_from needs num_seeds=1 and no sweep")  # fmt: skip
    ema = grid.get("ema_decay", ())
    if ema and min(ema) <= 0 < max(ema):
        raise ConfigError("sweep: ema_decay must be > 0 for every member or for none")
    seeds = tuple(int(config.seed) + j for _ in points for j in range(num_seeds))
    swept = {f: tuple(p[i] for p in points for _ in range(num_seeds)) for i, f in enumerate(grid)}
    return Population(seeds, swept, num_seeds)


def member_config(config: ml_collections.ConfigDict, population: Population, k: int) -> ml_collections.ConfigDict:
    """The config of member `k` trained alone (its seed and values, no sweep)."""
    c = config.copy_and_resolve_references()
    for field, value in population.values(k).items():
        c[field] = value
    c.sweep, c.num_seeds = "", 1
    return c


def member_dirs(workdir: str, population: Population) -> list[str]:
    """Where each member's metrics and curves go: the workdir itself for a
    population of one, a folder of it per member otherwise."""
    if population.size == 1:
        return [workdir]
    return [os.path.join(workdir, name) for name in population.names()]


def member_folder(workdir: str, info_reader: Callable[[str], dict[str, Any]]) -> tuple[str, int] | None:
    """``(run workdir, k)`` if `workdir` is member k's folder of a population
    (it holds no checkpoints of its own; its parent does). `info_reader` reads
    the parent's checkpoint metadata (its ``member_names``)."""
    parent = os.path.dirname(os.path.normpath(workdir))
    name = os.path.basename(os.path.normpath(workdir))
    if os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.path.isdir(os.path.join(parent, "checkpoints")):
        return None
    names = info_reader(parent)["member_names"]
    return (parent, names.index(name)) if name in names else None


def take(tree: Any, k: int) -> Any:
    """Member `k` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[k], tree)


# One compiled program for the whole tree: a slice per leaf, dispatched one at a
# time, costs a dispatch (and, the first time, a compilation) for every leaf.
_first = jax.jit(functools.partial(take, k=0))
_with_axis = jax.jit(lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree))


def stored(state: Any, size: int) -> Any:
    """A stacked state as the loop holds it between calls and a checkpoint holds
    it: stacked for several members, a single member's unstacked (the layout of
    checkpoints from before populations). Traced or not."""
    return _first(state) if size == 1 else state


def restacked(state: Any, size: int) -> Any:
    """`stored`'s inverse: the state with its member axis, as compiled code takes it. Traced or not."""
    return _with_axis(state) if size == 1 else state


def member(state: Any, size: int, k: int) -> Any:
    """Member `k` of a population of `size` held as `stored` holds it."""
    return state if size == 1 else take(state, k)


def per_member(metrics: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """``{name: [K, ...] values}`` -> one dict per member, on the host."""
    host = {k: np.asarray(jax.device_get(v)) for k, v in metrics.items()}
    return [{name: v[k] for name, v in host.items()} for k in range(size)]


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over members of each number in their evaluation metrics, with
    the members' own under ``"per_member"`` (what the checkpoint's metadata keeps);
    a single member's own."""
    if len(results) == 1:
        return results[0]
    numbers = [k for k, v in results[0].items() if isinstance(v, (int, float))]
    return {**{k: statistics.mean(r[k] for r in results) for k in numbers}, "per_member": results}
