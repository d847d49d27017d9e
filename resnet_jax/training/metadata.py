"""A checkpoint's metadata: one versioned schema, written by `run_metadata` and
`weights_metadata`, read through `upgrade`.

The metadata is the JSON beside each checkpoint's arrays: what rebuilds the
model without the config file, what preprocessing its weights expect, what
gives its steps and labels their meaning (checked on resume:
`check_resumable`), and the evaluation of that step. Schema 2 (written now,
``"schema": 2``) holds:

* ``model``, ``model_kwargs``, ``half_precision``, ``num_classes``,
  ``class_names``: the network and what each output is;
* ``image_size``, ``mean``, ``std``, ``crop_fraction``, ``centre_crop``: the
  evaluation preprocessing (``centre_crop``: resize the short side to
  ``image_size / crop_fraction`` and crop the centre; else resize the image to
  ``image_size``);
* ``num_seeds``, ``seeds``, ``num_members``, ``members``, ``member_names``:
  the population (`resnet_jax.training.population`); its arrays stack the
  members on a leading axis when ``num_members > 1``;
* ``batch_size``, ``num_train_examples``, ``config`` (the resolved config):
  the training run; None for converted weights, which name their ``source``
  instead (None for a training run);
* ``step`` and ``metrics`` (the evaluation of that step, each member's under
  ``per_member``): added by `Checkpointer.save`.

Schema 1 is the unversioned layout written before: `upgrade` reads it (and
every later version) into the current one, so that no other module knows an
older layout or defaults a missing field; a later version than this code
knows is refused (`CheckpointVersionError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from resnet_jax.errors import CheckpointMismatchError, CheckpointVersionError
from resnet_jax.training import population as pop

SCHEMA_VERSION = 2
DEFAULT_CROP_FRACTION = 0.875  # what readers of schema 1 assumed where a config did not name one


def run_metadata(
    config: ml_collections.ConfigDict, class_names: Sequence[str] | None = None, num_train: int | None = None
) -> dict:
    """The metadata of a training run of the resolved `config` on data of
    `class_names` with `num_train` training examples (None: not read yet, the
    facts of the config alone, which `check_resumable` checks as far as they go)."""
    members = pop.from_config(config)
    return _schema(
        model=config.model,
        model_kwargs=config.model_kwargs.to_dict(),
        half_precision=bool(config.half_precision),
        class_names=class_names,
        image_size=config.data.image_size,
        mean=config.data.mean,
        std=config.data.std,
        crop_fraction=config.data.crop_fraction,
        centre_crop=config.data.augment == "inception",
        num_seeds=int(config.num_seeds),
        seeds=[int(config.seed) + k for k in range(int(config.num_seeds))],
        members=members.describe(),
        member_names=members.names() if members.size > 1 else [],
        batch_size=int(config.batch_size),
        num_train_examples=num_train,
        config=json.loads(config.to_json_best_effort()),
        source=None,
    )


def weights_metadata(
    model: str,
    class_names: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float,
    source: str,
    model_kwargs: dict[str, Any] | None = None,
    half_precision: bool = False,
) -> dict:
    """The metadata of weights trained elsewhere (`resnet_jax.convert`): one
    network of unknown seed, no training run, evaluated with a centre crop of
    `crop_fraction` at `image_size` and normalised with `mean` and `std`."""
    return _schema(
        model=model,
        model_kwargs=model_kwargs or {},
        half_precision=half_precision,
        class_names=class_names,
        image_size=image_size,
        mean=mean,
        std=std,
        crop_fraction=crop_fraction,
        centre_crop=True,
        num_seeds=1,
        seeds=[None],
        members=[{"seed": None}],
        member_names=[],
        batch_size=None,
        num_train_examples=None,
        config=None,
        source=source,
    )


def _schema(*, model_kwargs: dict, class_names: Sequence[str] | None, mean: Sequence[float], std: Sequence[float],
            members: list[dict[str, Any]], **facts: Any) -> dict:  # fmt: skip
    """The current schema of the named facts, as JSON stores them (tuples as lists)."""
    return {
        "schema": SCHEMA_VERSION,
        **facts,
        "model_kwargs": json.loads(json.dumps(model_kwargs)),
        "num_classes": None if class_names is None else len(class_names),
        "class_names": None if class_names is None else list(class_names),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "num_members": len(members),
        "members": members,
    }


def upgrade(raw: dict[str, Any], where: str = "a checkpoint") -> dict[str, Any]:
    """`raw` metadata of any schema (as read from a checkpoint of `where`) in
    the current one, with every field present.

    Raises:
      CheckpointVersionError: `raw` is of a later schema than `SCHEMA_VERSION`.
    """
    version = raw.get("schema", 1)
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise CheckpointVersionError(
            f"{where} has metadata of schema {version!r}, and this version of resnet_jax reads schemas 1 to "
            f"{SCHEMA_VERSION}: read it with the newer resnet_jax that wrote it"
        )
    info = dict(raw)
    if version == 1:
        info = _from_1(info)
    if info["config"] is not None:
        info["config"] = upgrade_config(info["config"])
    return info


def _from_1(info: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2. Schema 1 gained its population fields over time (``num_seeds``
    and ``seeds`` with seeds trained together; ``num_members``, ``members``,
    ``member_names`` with sweeps; ``batch_size`` and ``num_train_examples`` with
    resume checks); a field its checkpoint predates is derived where it can be
    (one seed, the seeds' folders) and None (not checked on resume) where not.
    A conversion's config was a default training config: dropped."""
    data = (info.get("config") or {}).get("data") or {}
    num_seeds = int(info.get("num_seeds", 1))
    seeds = info.get("seeds")
    members = info.get("members") or ([{"seed": s} for s in seeds] if seeds is not None else None)
    num_members = int(info.get("num_members", num_seeds))
    metrics = info.get("metrics")
    if isinstance(metrics, dict) and "per_seed" in metrics:
        metrics = {("per_member" if k == "per_seed" else k): v for k, v in metrics.items()}
    source = info.get("source")
    return {
        **info,
        "schema": SCHEMA_VERSION,
        "model_kwargs": info.get("model_kwargs") or {},
        "half_precision": bool(info.get("half_precision", False)),
        "crop_fraction": data.get("crop_fraction", DEFAULT_CROP_FRACTION),
        "centre_crop": data.get("augment") == "inception",
        "num_seeds": num_seeds,
        "seeds": seeds,
        "num_members": num_members,
        "members": members,
        "member_names": info.get("member_names") or _seed_folders(num_members),
        "batch_size": info.get("batch_size"),
        "num_train_examples": info.get("num_train_examples"),
        "config": info.get("config") if source is None else None,
        "source": source,
        "step": info.get("step"),
        "metrics": metrics,
    }


def _seed_folders(num_members: int) -> list[str]:
    """The members' folders of a checkpoint written before they were named: ``seed<k>``."""
    return [pop.SEED_DIR.format(k) for k in range(num_members)] if num_members > 1 else []


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as saved by any earlier version (in a checkpoint's
    metadata or a run's ``config.json``), with today's field names: runs from
    before ``num_seeds`` trained one seed; ``seed_batching`` is now ``member_batching``."""
    config = {"num_seeds": 1, **config}
    if "seed_batching" in config:
        config["member_batching"] = config.pop("seed_batching")
    return config


# What a resumed run may not change: the model and its shapes, and what a step
# and a label mean (the batch size and the examples per epoch fix the epoch of a
# step and the schedule; the class names in order fix what each output is). A
# field a checkpoint predates (None after `upgrade`) is not checked.
RESUME_FIXED = (
    "model", "model_kwargs", "num_classes", "num_seeds", "seeds", "members", "class_names", "batch_size",
    "num_train_examples",
)  # fmt: skip


def check_resumable(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Raises `CheckpointMismatchError` if a run of metadata `current` may not
    resume the checkpoint of (upgraded) metadata `saved` in `where`: converted
    weights, or the first field of `RESUME_FIXED` that differs."""
    if saved["source"] is not None:
        raise CheckpointMismatchError(
            f"{where} holds converted weights ({saved['source']}), not a run to resume: start from them with "
            f"init_from={os.path.dirname(where)!r} and another --workdir"
        )
    for key in RESUME_FIXED:
        if saved[key] is not None and current[key] is not None and saved[key] != current[key]:
            raise CheckpointMismatchError(
                f"{where} was trained with {key}={_short(saved[key])}, but this run has {key}={_short(current[key])}; "
                f"resuming would change what its steps or labels mean: use the saved value or another --workdir"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "...]"
