"""The runs of a study: which networks, with which recipe, in which folders.

Each run is an ordinary training run in ``<study workdir>/<model>/``; with
several seeds they train together in one step (``config.num_seeds``,
`resnet_jax.training.population`: a population of seeds), each seed's metrics in ``<model>/seed<k>/``. A
finished run holds ``result.json`` (per seed: its errors, parameters and
Figure 7 statistic); running the study again skips it and resumes any
unfinished one from its latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ml_collections

from resnet_jax import models
from resnet_jax.config import cifar10_paper_config
from resnet_jax.errors import ConfigError
from resnet_jax.training.metadata import upgrade_config

# The networks of each study (He et al. 2015, Section 4.2: Figure 6 and Table 6).
STUDIES = {
    "cifar10": (
        "cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56",
        "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
    ),
}  # fmt: skip
RECIPES = {"cifar10": cifar10_paper_config}

STATE_FILE = "study.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Run:
    """One network of a study, with its seeds (trained together in one step)."""

    model: str
    workdir: str
    config: ml_collections.ConfigDict

    @property
    def total_steps(self) -> int:
        return int(self.config.num_train_steps)

    @property
    def num_seeds(self) -> int:
        return int(self.config.num_seeds)

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)

    def describe(self) -> str:
        """What the run trains, for the log."""
        seeds = f"{self.num_seeds} seeds together in one step, " if self.num_seeds > 1 else ""
        return f"{seeds}{self.total_steps:,} steps in {self.workdir}"


def scale_recipe(config: ml_collections.ConfigDict, scale: float) -> None:
    """Multiplies every iteration count of a step-based recipe by `scale`: the
    steps, the lr boundaries and the constant warm-up (each at least 1)."""
    if scale <= 0:
        raise ConfigError(f"--scale must be positive, got {scale}")
    if config.num_train_steps <= 0 or config.lr_boundaries_in_epochs:
        raise ConfigError("--scale needs a recipe counted in steps (num_train_steps > 0, boundaries in steps)")
    config.num_train_steps = max(1, round(config.num_train_steps * scale))
    config.lr_boundaries = tuple(max(1, round(b * scale)) for b in config.lr_boundaries)
    if config.warmup_constant_steps > 0:
        config.warmup_constant_steps = max(1, round(config.warmup_constant_steps * scale))


def plan(
    study: str,
    workdir: str,
    only: Sequence[str] = (),
    seeds: int = 1,
    scale: float = 1.0,
    evals: int = 20,
    overrides: dict[str, Any] | None = None,
) -> list[Run]:
    """The runs of `study` (or of the networks in `only`), each with the
    study's recipe at `scale`, `evals` evaluations spread evenly over training,
    `seeds` seeds trained together (seeds ``seed ... seed + seeds - 1``), then
    `overrides` (flattened config fields, e.g. ``{"data.path": ...}``)."""
    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; studies: {', '.join(STUDIES)}")
    if seeds < 1 or evals < 1:
        raise ConfigError(f"--seeds and --evals must be at least 1, got {seeds} and {evals}")
    overrides = dict(overrides or {})
    if "model" in overrides:
        raise ConfigError("a study trains several networks: pick them with --only, not --config.model")
    if "num_seeds" in overrides:
        raise ConfigError("the study sets num_seeds from --seeds")
    names = list(only) or list(STUDIES[study])
    # Figure 7 measures post-activation networks: plain ones and ResNets.
    usable = [n for n in models.list_models("cifar") if "preact" not in n and "wrn" not in n]
    unknown = [n for n in names if n not in usable]
    if unknown:
        raise ConfigError(f"network(s) {unknown} cannot be in study {study!r}; it takes: {', '.join(usable)}")
    runs = []
    for model in dict.fromkeys(names):
        config = RECIPES[study](model)
        scale_recipe(config, scale)
        config.eval_every_steps = math.ceil(config.num_train_steps / evals)
        config.checkpoint_on_eval = True  # a resumable point at every point of the curves (and the best one)
        config.num_seeds = seeds
        config.update_from_flattened_dict(overrides)
        runs.append(Run(model, os.path.join(workdir, model), config))
    return runs


def check_study_state(workdir: str, study: str, scale: float) -> dict[str, Any]:
    """Reads (or starts) ``<workdir>/study.json``; a workdir of another study or
    scale is refused, so that no run is continued with another schedule."""
    path = os.path.join(workdir, STATE_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            state = json.load(f)
        if state["study"] != study or not math.isclose(state["scale"], scale):
            raise ConfigError(
                f"{workdir!r} holds study {state['study']!r} at scale {state['scale']}, not {study!r} at scale "
                f"{scale}; use another --workdir"
            )
        return state
    os.makedirs(workdir, exist_ok=True)
    state = {"study": study, "scale": scale, "sittings": []}
    write_json(path, state)
    return state


def check_schedules(runs: Sequence[Run]) -> None:
    """Refuses to continue a run whose folder was started with another schedule
    (its ``config.json`` names other steps or lr boundaries): resuming it would
    mix two schedules in one curve."""
    keys = ("num_train_steps", "lr_boundaries", "warmup_constant_steps", "batch_size", "num_seeds")
    for run in runs:
        path = os.path.join(run.workdir, "config.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            saved = upgrade_config(json.load(f))
        for key in keys:
            old = saved.get(key)
            new = json.loads(json.dumps(run.config[key]))  # tuples as JSON lists
            if old != new:
                raise ConfigError(
                    f"{run.workdir!r} was started with {key}={old}, this study has {key}={new}; "
                    "use another --workdir (or the same --scale and overrides)"
                )


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON through a temporary file, so a reader never sees half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def read_result(run: Run) -> dict[str, Any] | None:
    """The run's ``result.json`` if it finished, else None."""
    path = os.path.join(run.workdir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
