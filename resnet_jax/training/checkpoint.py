"""Orbax checkpoints of the whole train state, with metadata to rebuild the model.

Layout: ``<workdir>/checkpoints/<step>/{state,metadata}``. ``state`` is the
train state as a plain nested dict (params, batch_stats, opt_state, step, EMA,
rng); ``metadata`` is JSON: the model name and its keyword arguments, class
names, image size, normalisation, the resolved config and the eval metrics of
that step. Orbax writes each step into a temporary folder and renames it only
once complete, so a save cut off midway is never found by `latest_step`. A run
on the Grain pipeline adds ``data``: its input iterator's state.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from resnet_jax import models
from resnet_jax.errors import CheckpointMismatchError, ConfigError, NotFoundError
from resnet_jax.training import seeds
from resnet_jax.training.state import step_of


def run_metadata(config: ml_collections.ConfigDict, class_names: Any) -> dict[str, Any]:
    """What a checkpoint carries to rebuild its model without the config file."""
    return {
        "model": config.model,
        "model_kwargs": json.loads(json.dumps(config.model_kwargs.to_dict())),  # as saved: tuples become lists
        "num_seeds": int(config.num_seeds),  # > 1: the arrays stack the seeds on a leading axis
        "seeds": seeds.seed_values(config),
        "half_precision": bool(config.half_precision),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": config.data.image_size,
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "config": json.loads(config.to_json_best_effort()),
    }


def _to_tree(state: Any) -> dict[str, Any]:
    tree = flax.serialization.to_state_dict(state)
    return {k: v for k, v in tree.items() if v is not None}


class Checkpointer:
    """Saves and restores train states under ``<workdir>/checkpoints``."""

    def __init__(
        self, workdir: str, keep: int = 3, keep_best: bool = True, async_save: bool = True, data_iterator: Any = None
    ):
        """
        Args:
          workdir: the run's folder.
          keep: how many of the latest checkpoints to keep.
          keep_best: also keep the checkpoint of best eval top-1.
          async_save: write in a background thread (training goes on meanwhile).
          data_iterator: an input pipeline's Grain iterator, saved with every state
            (item ``data``, Grain's Orbax handler) and restored with it where saved.
        """
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        policies: list[Any] = [cm.LatestN(n=keep)]
        if keep_best:
            policies.append(
                cm.BestN(get_metric_fn=lambda m: m["top1"], n=1, keep_checkpoints_without_metrics=False)
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
        self.data_iterator = data_iterator
        if data_iterator is not None or importlib.util.find_spec("grain") is not None:
            import grain  # its handler also lets a checkpointer without an iterator read past the item

            handlers["data"] = grain.checkpoint.CheckpointHandler()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the highest eval top-1 (the latest if none has metrics)."""
        scored = []
        for step in self.all_steps():
            top1 = (self.metadata(step).get("metrics") or {}).get("top1")
            if top1 is not None:
                scored.append((top1, step))
        return max(scored)[1] if scored else self.latest_step()

    def save(self, state: Any, metadata: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Saves `state` at its step (asynchronously), with `metadata` and eval `metrics`."""
        step = step_of(state)
        metadata = {**metadata, "step": step, "metrics": metrics}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)), metadata=ocp.args.JsonSave(metadata), **self._data("Save")
            ),
            metrics={"top1": metrics["top1"]} if metrics and "top1" in metrics else None,
            force=True,
        )

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        return self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores `step` (default: the latest) into the structure, shapes and
        shardings of `target` (a train state on the current devices).

        Raises:
          CheckpointMismatchError: listing every array whose shape differs or
            that is missing, e.g. a checkpoint of another model.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        target_tree = _to_tree(target)
        self._check_shapes(step, target_tree)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target_tree)
        saved_data = self.data_iterator is not None and (epath.Path(self.directory) / str(step) / "data").exists()
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), **self._data("Restore", saved_data))
        )["state"]
        return flax.serialization.from_state_dict(target, {**flax.serialization.to_state_dict(target), **restored})

    def _data(self, action: str, saved: bool = True) -> dict[str, Any]:
        """``{"data": Grain's CheckpointSave/CheckpointRestore of the data iterator}``, or
        nothing without an iterator (or, restoring, when the step holds none)."""
        if self.data_iterator is None or not saved:
            return {}
        import grain

        return {"data": getattr(grain.checkpoint, f"Checkpoint{action}")(self.data_iterator)}

    def restore_tree(self, step: int | None = None, sharding: Any = None) -> dict[str, Any]:
        """Restores `step` as the nested dict it was saved as, without a target.

        Every array is placed with `sharding` (default: the first local device),
        so a checkpoint saved on 8 devices restores on 1 and the reverse.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise NotFoundError(f"no checkpoint in {self.directory}")
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = self.manager.item_metadata(step)["state"]
        abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved)
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

    def _check_shapes(self, step: int, target_tree: dict[str, Any]) -> None:
        saved = self.manager.item_metadata(step)["state"]
        saved_shapes = {
            jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]
        }
        problems = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(target_tree)[0]:
            key = jax.tree_util.keystr(path)
            if key not in saved_shapes:
                problems.append(f"{key}: missing from the checkpoint")
            elif saved_shapes[key] != tuple(leaf.shape):
                problems.append(f"{key}: checkpoint {saved_shapes[key]} vs model {tuple(leaf.shape)}")
        if problems:
            listing = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} does not fit this model:\n  {listing}"
            )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _resolve_step(ckpt: Checkpointer, step: int | str | None) -> int:
    if step in (None, "latest"):
        found = ckpt.latest_step()
    elif step == "best":
        found = ckpt.best_step()
    else:
        found = int(step)
        if found not in ckpt.all_steps():
            raise NotFoundError(f"no checkpoint of step {found} in {ckpt.directory}; it has {ckpt.all_steps()}")
    if found is None:
        raise NotFoundError(f"no checkpoint in {ckpt.directory}")
    return found


def restore(
    workdir: str, step: int | str | None = None, ema: bool = False, seed: int | None = None
) -> tuple[Any, dict, dict]:
    """Rebuilds the model of a training run and loads its variables.

    Args:
      workdir: the run's workdir (holding ``checkpoints/``), or the ``seed<k>``
        folder of a run that trained several seeds together.
      step: a step number, "latest" (default) or "best" (highest eval top-1;
        the mean over seeds for several).
      ema: load the EMA weights (if the run kept them).
      seed: which of the seeds trained together (0 ... num_seeds - 1); needed
        for such a run unless `workdir` is a ``seed<k>`` folder.

    Returns:
      ``(model, variables, info)``: a Flax module, ``{"params", "batch_stats"}``
      for ``model.apply(variables, images, train=False)`` (images normalised
      with ``info["mean"]``/``info["std"]``; see `preprocess`), and the
      checkpoint's metadata (class names, image size, metrics, step, config).
    """
    parent = seeds.packed_parent(workdir)
    if parent is not None and seed is None:
        workdir, seed = parent
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise NotFoundError(f"{workdir!r} holds no checkpoints/ folder: is it a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        step = _resolve_step(ckpt, step)
        info = ckpt.metadata(step)
        tree = ckpt.restore_tree(step)
    finally:
        ckpt.close()
    tree, info = _one_seed(tree, info, workdir, seed)
    dtype = jnp.bfloat16 if info.get("half_precision") else jnp.float32
    model = models.create(info["model"], num_classes=info["num_classes"], dtype=dtype, **info["model_kwargs"])
    prefix = "ema_" if ema else ""
    if ema and "ema_params" not in tree:
        raise ConfigError(f"the checkpoint of step {step} in {workdir!r} holds no EMA weights")
    variables = {"params": tree[prefix + "params"], "batch_stats": tree[prefix + "batch_stats"]}
    return model, variables, info


def _one_seed(tree: dict, info: dict, workdir: str, seed: int | None) -> tuple[dict, dict]:
    """Seed `seed` of a checkpoint of seeds trained together, with its own
    metrics and seed in the metadata; a checkpoint of one seed as it is."""
    num_seeds = info.get("num_seeds", 1)
    if num_seeds == 1:
        if seed not in (None, 0):
            raise ConfigError(f"{workdir!r} trained one seed; there is no seed index {seed}")
        return tree, info
    if seed is None or not 0 <= seed < num_seeds:
        raise ConfigError(
            f"{workdir!r} holds {num_seeds} seeds trained together: restore one with seed=k (0 to {num_seeds - 1}) "
            f"or from its folder {os.path.join(workdir, seeds.SEED_DIR.format(0))!r}"
        )
    metrics = info.get("metrics") or {}
    info = {**info, "seed": info["seeds"][seed], "seed_index": seed, "num_seeds": 1}
    info["metrics"] = metrics["per_seed"][seed] if "per_seed" in metrics else None
    return seeds.take(tree, seed), info


def read_metadata(workdir: str, step: int | str | None = None) -> dict[str, Any]:
    """The metadata of a checkpoint of `workdir` (`step` as in `restore`), without its arrays."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise NotFoundError(f"{workdir!r} holds no checkpoints/ folder: is it a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        return ckpt.metadata(_resolve_step(ckpt, step))
    finally:
        ckpt.close()


PREPROCESSING = ("mean", "std", "image_size", "crop_fraction")


def use_checkpoint_preprocessing(
    config: ml_collections.ConfigDict, info: dict[str, Any], fields: tuple[str, ...] = PREPROCESSING
) -> list[str]:
    """Sets `fields` of ``config.data`` (in place) to the preprocessing the checkpoint's
    weights were evaluated with (`info`: its metadata, e.g. from a conversion of
    timm's weights with mean = std = 0.5); returns ``"field old -> new"`` for each change."""
    changes = []
    for field in fields:
        old, new = config.data[field], info["config"]["data"][field]
        if isinstance(new, list):
            old, new = tuple(old), tuple(new)
        if old != new:
            changes.append(f"{field} {old} -> {new}")
            config.data[field] = new
    return changes
