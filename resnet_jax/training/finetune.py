"""Start a run from pretrained variables (another run, or converted torchvision weights).

They load through the public `resnet_jax.restore`, as a user's code would:
``init_from`` takes whatever `restore` takes (a workdir, a member's folder, a
conversion). That module imports no trainer, so the one import from training/
up to it makes no circle.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.errors import CheckpointMismatchError
from resnet_jax.restore import read_metadata, restore, use_checkpoint_preprocessing
from resnet_jax.training.state import TrainState


def merge_pretrained(fresh: Any, pretrained: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """Takes each array of `pretrained` whose path and shape match `fresh`; keeps
    the fresh one elsewhere (e.g. a head for another number of classes).
    Returns the merged tree and the paths kept fresh."""
    if not isinstance(fresh, dict):
        same = pretrained is not None and getattr(pretrained, "shape", None) == fresh.shape
        return (pretrained if same else fresh), ([] if same else [prefix])
    merged, kept = {}, []
    for key, value in fresh.items():
        sub = pretrained.get(key) if isinstance(pretrained, dict) else None
        merged[key], k = merge_pretrained(value, sub, f"{prefix}/{key}" if prefix else key)
        kept += k
    return merged, kept


def use_pretrained_normalization(config: ml_collections.ConfigDict) -> None:
    """Normalises inputs as ``config.init_from``'s weights expect: sets ``config.data.mean``
    and ``std`` (in place) to its checkpoint's, saying so where they change (timm's
    weights often use 0.5 and 0.5). Image size and crop fraction stay the config's."""
    if not config.init_from:
        return
    changes = use_checkpoint_preprocessing(config, read_metadata(config.init_from), ("mean", "std"))
    if changes and jax.process_index() == 0:
        print(f"Normalising as the weights of {config.init_from} expect: {'; '.join(changes)}.")


def load_pretrained(state: TrainState, workdir: str, mesh: Mesh) -> tuple[TrainState, str]:
    """`state` with params and batch_stats taken from the checkpoint in `workdir`
    where they fit; the optimiser state is started afresh."""
    _, variables, info = restore(workdir, "latest")
    params, fresh_params = merge_pretrained(jax.device_get(state.params), jax.device_get(variables["params"]))
    stats, fresh_stats = merge_pretrained(jax.device_get(state.batch_stats), jax.device_get(variables["batch_stats"]))
    if len(fresh_params) > 2:  # more than a head's kernel and bias: not this architecture
        raise CheckpointMismatchError(
            f"the checkpoint in {workdir!r} ({info['model']}) fits this model in too few places; "
            f"{len(fresh_params)} parameters would stay untrained, e.g. {fresh_params[:5]}"
        )
    ema = state.ema_params is not None  # the EMA starts from the weights, in buffers of its own: the step
    state = state.replace(  # donates both, and a buffer donated twice is refused
        params=parallel.replicate(params, mesh),
        batch_stats=parallel.replicate(stats, mesh),
        opt_state=state.tx.init(parallel.replicate(params, mesh)),
        ema_params=parallel.replicate(params, mesh) if ema else None,
        ema_batch_stats=parallel.replicate(stats, mesh) if ema else None,
    )
    fresh = fresh_params + fresh_stats
    report = f"Initialised from {workdir} ({info['model']}, step {info['step']})"
    return state, report + (f"; new: {', '.join(fresh)}." if fresh else ".")
