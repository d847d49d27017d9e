"""Convert torchvision ResNet weights into resnet_jax variables and checkpoints.

    python -m resnet_jax.convert torchvision resnet50 resnet50.safetensors out_dir
    python -m resnet_jax.convert torchvision resnet18 resnet18.pth out_dir

``.safetensors`` files are read without torch. ``.pth`` files need torch (the
``torch`` extra) and are loaded with ``torch.load(..., weights_only=True)``:
no pickled code is ever run. The output is an Orbax checkpoint in
``out_dir/checkpoints`` that `resnet_jax.restore(out_dir)`, the eval command
and fine-tuning configs (``config.init_from``) load.

Names map one to one: ``conv1``/``bn1`` -> ``stem_conv``/``stem_bn``,
``layer{i}.{j}.conv{k}`` -> ``stage{i}/block{j}/conv{k}``,
``layer{i}.{j}.downsample.{0,1}`` -> ``stage{i}/block{j}/shortcut_{conv,bn}``,
``fc`` -> ``head``; kernels OIHW -> HWIO, dense (out, in) -> (in, out).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.errors import ConfigError, MissingDependencyError, NotFoundError, UserError, exit_on_user_error

TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip


class ConversionError(UserError, ValueError):
    """The state dict does not fit the model: keys missing, unexpected or misshapen."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a torchvision state dict from ``.safetensors`` (no torch needed) or
    ``.pth``/``.pt`` (torch, ``weights_only=True``) as numpy arrays."""
    if not os.path.isfile(path):
        raise NotFoundError(f"weight file {path!r} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise MissingDependencyError(f"reading {path} needs safetensors: pip install safetensors") from None

        try:
            return dict(load_file(path))
        except Exception as e:  # any parse failure of the user's file
            raise ConversionError(f"{path} is not a readable .safetensors file ({e})") from None
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"reading {path} needs torch (the 'torch' extra), or use .safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of the user's file
        raise ConversionError(f"{path} is not a readable torch state dict ({str(e).splitlines()[0]})") from None
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    if isinstance(state, Mapping) and "state_dict" in state and not any(k.endswith(".weight") for k in state):
        state = state["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _jax_path(key: str) -> tuple[str, tuple[str, ...], str] | None:
    """torchvision key -> (collection, module path, variable name); None for ignored keys."""
    *module, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    name = ".".join(module)
    if name == "conv1":
        path = ("stem_conv",)
    elif name == "bn1":
        path = ("stem_bn",)
    elif name == "fc":
        path = ("head",)
    else:
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", name)
        if not m:
            return ("unknown", (name,), leaf)
        part = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_bn"}.get(m.group(3), m.group(3))
        path = (f"stage{m.group(1)}", f"block{m.group(2)}", part)
    conv = path[-1].startswith(("conv", "stem_conv", "shortcut_conv"))
    if leaf == "weight":
        return ("params", path, "kernel" if conv or path == ("head",) else "scale")
    if leaf == "bias":
        return ("params", path, "bias")
    if leaf in ("running_mean", "running_var"):
        return ("batch_stats", path, {"running_mean": "mean", "running_var": "var"}[leaf])
    return ("unknown", path, leaf)


def _to_jax_layout(value: np.ndarray, name: str) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and name == "kernel":  # (out, in) -> (in, out)
        return value.T
    return value


def from_torchvision(state_dict: Mapping[str, Any], name: str, num_classes: int | None = None) -> dict:
    """Converts a torchvision state dict into ``{"params", "batch_stats"}`` of
    ``models.create(name, num_classes)`` (num_classes: from ``fc.weight``).

    Raises:
      ConversionError: listing every missing, unexpected and misshapen key.
    """
    if name not in TORCHVISION_MODELS:
        raise ConfigError(f"no torchvision counterpart for {name!r}; convertible: {', '.join(TORCHVISION_MODELS)}")
    state = {k: np.array(v, np.float32) for k, v in state_dict.items()}  # a copy: torch updates in place
    if num_classes is None and "fc.weight" in state:
        num_classes = state["fc.weight"].shape[0]
    model = models.create(name, num_classes=num_classes)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False))
    expected = {
        (col, tuple(getattr(p, "key", p) for p in path[:-1]), path[-1].key): leaf.shape
        for col in target
        for path, leaf in jax.tree_util.tree_leaves_with_path(target[col])
    }
    out: dict = {"params": {}, "batch_stats": {}}
    problems, found = [], set()
    for key, value in state.items():
        mapped = _jax_path(key)
        if mapped is None:
            continue
        col, path, leaf = mapped
        if (col, path, leaf) not in expected:
            problems.append(f"unexpected key {key!r}")
            continue
        value = _to_jax_layout(value, leaf)
        want = expected[(col, path, leaf)]
        found.add((col, path, leaf))
        if value.shape != tuple(want):
            problems.append(f"{key!r}: shape {tuple(state[key].shape)} does not fit {'/'.join(path)}/{leaf} {want}")
            continue
        node = out[col]
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    for col, path, leaf in sorted(set(expected) - found):
        problems.append(f"missing {'/'.join(path)}/{leaf} ({col})")
    if problems:
        listing = "\n  ".join(problems)
        raise ConversionError(f"state dict does not fit {name} ({num_classes} classes):\n  {listing}")
    return out


def write_checkpoint(
    variables: dict, name: str, out_dir: str, class_names: list[str] | None = None, image_size: int = 224
) -> None:
    """Writes `variables` as a step-0 checkpoint that `resnet_jax.restore(out_dir)` loads,
    with the metadata of a run that used ImageNet preprocessing at `image_size`."""
    from resnet_jax.config import IMAGENET_MEAN, IMAGENET_STD, default_config
    from resnet_jax.training.checkpoint import Checkpointer, run_metadata

    num_classes = variables["params"]["head"]["kernel"].shape[1]
    class_names = class_names or [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for a head of {num_classes} classes")
    config = default_config()
    config.model = name
    config.data.image_size, config.data.augment = image_size, "inception"
    config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
    metadata = {**run_metadata(config, class_names), "source": "torchvision"}
    state = {"step": np.zeros((), np.int32), **variables}
    ckpt = Checkpointer(out_dir, async_save=False)
    ckpt.save(_Tree(state), metadata)
    ckpt.wait()
    ckpt.close()


class _Tree(dict):
    """A dict with the `.step` that `Checkpointer.save` reads."""

    @property
    def step(self) -> np.ndarray:
        return self["step"]


def _read_class_names(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise NotFoundError(f"class-name file {path!r} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", choices=["torchvision"])
    parser.add_argument("model", help=f"one of {', '.join(TORCHVISION_MODELS)}")
    parser.add_argument("weights", help="a .safetensors or .pth state dict")
    parser.add_argument("out_dir")
    parser.add_argument("--class-names", help="a text file with one class name per line")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        names = _read_class_names(args.class_names) if args.class_names else None
        variables = from_torchvision(load_state_dict(args.weights), args.model)
        write_checkpoint(variables, args.model, args.out_dir, names)
    params = models.count_params(variables)
    print(f"wrote {os.path.join(args.out_dir, 'checkpoints')}: {args.model}, {params:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
