"""resnet_jax variables -> a PyTorch state dict of torchvision's or timm's model: `resnet_jax.convert` reversed.

Names map one to one, as `resnet_jax.convert` documents them, read the other
way: ``stem_conv`` -> ``conv1``, ``stage{i}/block{j}/shortcut_conv`` ->
``layer{i}.{j}.downsample.0`` (``.1`` after ResNet-D's pool), ``head`` ->
``fc``; timm's ResNetV2: ``stage{i}/block{j}/bn{k}`` ->
``stages.{i-1}.blocks.{j}.norm{k}``, ``final_bn`` -> ``norm``, ``head`` ->
``head.fc`` (a 1x1 convolution). Kernels HWIO -> OIHW, dense (in, out) ->
(out, in). Each batch norm also gets ``num_batches_tracked`` (int64 0): a
converted checkpoint does not keep it, and PyTorch reads it only when
``momentum=None``.

Every state dict made here is checked by converting it back
(`convert.from_torchvision` / `from_timm`) to the same arrays, so a key
that convert would not map, or a shape that differs, stops the export.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np

from resnet_jax import convert, models
from resnet_jax.errors import ExportError

# Model fields that do not change what a network computes at inference, or that
# the state dict itself carries: any other field must keep the registered default.
_FREE_FIELDS = {"num_classes", "dtype", "zero_init_residual", "bn_momentum", "bn_one_pass", "drop_path_rate"}


def library_name(library: str, model_name: str) -> str:
    """The name of `model_name` (ours) in `library` ("torchvision" or "timm").

    Raises:
      ExportError: the library has no such architecture (the message names those that it has).
    """
    if library == "torchvision" and model_name in convert.TORCHVISION_MODELS:
        return model_name
    if library == "timm":
        for theirs, ours in convert.TIMM_MODELS.items():
            if ours == model_name:
                return theirs
    names = convert.TORCHVISION_MODELS if library == "torchvision" else sorted(set(convert.TIMM_MODELS.values()))
    hint = ""
    if library == "torchvision" and model_name in convert.TIMM_MODELS.values():
        hint = " (timm has it: --format timm)"
    raise ExportError(
        f"{library} has no counterpart for {model_name!r}{hint}; the models it can express: {', '.join(names)}"
    )


def check_expressible(model: Any, model_name: str) -> None:
    """Raises `ExportError` if `model` (built with a checkpoint's model_kwargs)
    differs from the registered `model_name` in a field that changes its
    outputs (e.g. ``stride_on_3x3``, ``bn_epsilon``), which the library's model would not follow."""
    default = models.create(model_name)
    changed = [
        f"{f.name}={getattr(model, f.name)!r}"
        for f in dataclasses.fields(model)
        if f.name not in _FREE_FIELDS | {"parent", "name"} and getattr(model, f.name) != getattr(default, f.name)
    ]
    if changed:
        raise ExportError(
            f"{model_name} with {', '.join(changed)} is not the library's {model_name}: its model would compute "
            "something else from these weights"
        )


def _torchvision_key(path: tuple[str, ...], avg_down: bool) -> str:
    fixed = {
        "stem_conv": "conv1", "stem_bn": "bn1", "head": "fc", "stem_conv1": "conv1.0", "stem_bn1": "conv1.1",
        "stem_conv2": "conv1.3", "stem_bn2": "conv1.4", "stem_conv3": "conv1.6",
    }  # fmt: skip
    if len(path) == 1:
        return fixed[path[0]]
    stage, block, part = path
    shortcut = {"shortcut_conv": f"downsample.{int(avg_down)}", "shortcut_bn": f"downsample.{int(avg_down) + 1}"}
    return f"layer{stage.removeprefix('stage')}.{block.removeprefix('block')}.{shortcut.get(part, part)}"


def _resnetv2_key(path: tuple[str, ...], avg_down: bool) -> str:
    if len(path) == 1:
        name = path[0]
        fixed = {"stem_conv": "stem.conv", "final_bn": "norm", "head": "head.fc"}
        if name in fixed:
            return fixed[name]
        return re.sub(r"stem_(conv|bn)(\d)", lambda m: f"stem.{'norm' if m[1] == 'bn' else 'conv'}{m[2]}", name)
    stage, block, part = path
    part = "downsample.conv" if part == "shortcut_conv" else part.replace("bn", "norm")
    return f"stages.{int(stage.removeprefix('stage')) - 1}.blocks.{block.removeprefix('block')}.{part}"


_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def to_state_dict(variables: dict, model: Any, model_name: str, library: str) -> tuple[str, dict[str, np.ndarray]]:
    """``(library's model name, state dict)`` of `variables` of `model` (registered as
    `model_name`), for ``torchvision.models.<name>(num_classes=N)`` or
    ``timm.create_model(name, num_classes=N)`` with ``load_state_dict(..., strict=True)``.

    Raises:
      ExportError: the library cannot express the model.
    """
    theirs = library_name(library, model_name)
    check_expressible(model, model_name)
    resnetv2 = theirs.startswith("resnetv2_")
    key_of = _resnetv2_key if resnetv2 else _torchvision_key
    state: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection]):
            *module, name = (getattr(p, "key", p) for p in path)
            value = np.array(leaf, np.float32)
            if value.ndim == 4:  # HWIO -> OIHW
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:  # the head: (in, out) -> (out, in), timm's ResNetV2: a 1x1 convolution
                value = value.T[:, :, None, None] if resnetv2 else value.T
            prefix = key_of(tuple(module), model.avg_down)
            state[f"{prefix}.{_LEAF[name]}"] = np.ascontiguousarray(value)
            if name == "mean":
                state[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    _check_round_trip(state, variables, theirs, library)
    return theirs, state


def _check_round_trip(state: dict, variables: dict, name: str, library: str) -> None:
    """`state` converts back to `variables` exactly (every key mapped, every shape fitting)."""
    num_classes = variables["params"]["head"]["kernel"].shape[1]
    convert_back = convert.from_torchvision if library == "torchvision" else convert.from_timm
    try:
        back = convert_back(state, name, num_classes)
    except convert.ConversionError as e:
        raise ExportError(f"these weights do not fit {library}'s {name}: {e}") from None
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a, np.float32), b), variables, back)
    if not all(jax.tree_util.tree_leaves(same)):
        raise ExportError(f"these weights do not convert back to themselves through {library}'s {name}")
