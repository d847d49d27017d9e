"""Convert torchvision and timm ResNet weights into resnet_jax variables and checkpoints.

    python -m resnet_jax.convert torchvision resnet50 resnet50.safetensors out_dir
    python -m resnet_jax.convert torchvision resnet50.IMAGENET1K_V2 resnet50.pth out_dir
    python -m resnet_jax.convert timm resnet50d.ra4_e3600_r224_in1k model.safetensors out_dir
    python -m resnet_jax.convert timm resnetv2_50.a1h_in1k model.safetensors out_dir

``.safetensors`` files are read without torch. ``.pth`` files need torch (the
``torch`` extra) and are loaded with ``torch.load(..., weights_only=True)``:
no pickled code is ever run. The output is an Orbax checkpoint in
``out_dir/checkpoints`` that `resnet_jax.restore(out_dir)`, the eval command
and fine-tuning configs (``config.init_from``) load. Its metadata carries the
preprocessing the weights expect (mean, std, crop fraction, resolution): from
the weights' tag (`resnet_jax.weights`), or from ``--mean``, ``--std``,
``--crop-fraction`` and ``--image-size``. ``out_dir`` must be new or empty, or
hold an earlier conversion and ``--overwrite`` be given: a conversion never
writes into a training run (its step 0 would push the run's checkpoints out).
The new conversion is written beside ``out_dir`` and swapped in when complete
(`resnet_jax.outputs`): a conversion that fails, is stopped or killed leaves
the earlier one whole, and the same command runs again.

Names map one to one. torchvision's (and timm's ResNet, whose keys are the
same): ``conv1``/``bn1`` -> ``stem_conv``/``stem_bn``,
``layer{i}.{j}.conv{k}`` -> ``stage{i}/block{j}/conv{k}``,
``layer{i}.{j}.downsample.{0,1}`` -> ``stage{i}/block{j}/shortcut_{conv,bn}``,
``fc`` -> ``head``. timm's deep stem ``conv1.{0,1,3,4,6}`` ->
``stem_conv1``, ``stem_bn1``, ``stem_conv2``, ``stem_bn2``, ``stem_conv3``;
ResNet-D's ``downsample.{1,2}`` (after the pool) -> ``shortcut_{conv,bn}``.
timm's pre-activation ResNetV2 (BatchNorm; ``resnetv2_<depth>[d]``):
``stem.conv`` (``stem.conv{1,2,3}``, ``stem.norm{1,2}``) -> ``stem_conv``
(``stem_conv{1,2,3}``, ``stem_bn{1,2}``), ``stages.{i}.blocks.{j}.conv{k}`` /
``norm{k}`` / ``downsample.conv`` -> ``stage{i+1}/block{j}/conv{k}`` /
``bn{k}`` / ``shortcut_conv``, ``norm`` -> ``final_bn``, ``head.fc`` (a 1x1
convolution) -> ``head``. Kernels OIHW -> HWIO, dense (out, in) -> (in, out).
BiT's ResNetV2 (``resnetv2_*_bit``: GroupNorm, weight-standardised
convolutions) and the GroupNorm/EvoNorm/FRN ``resnetv2_50d_*`` do not map.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m resnet_jax.convert: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("convert")

import functools  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from resnet_jax import models, outputs, weights  # noqa: E402
from resnet_jax.errors import (  # noqa: E402
    ArgumentParser,
    ConfigError,
    MissingDependencyError,
    NotFoundError,
    OutputWriteError,
    UserError,
    cannot_write_output,
    exit_on_user_error,
    run_main,
    stop_behind,
    stop_name,
    stops_held,
    stops_raise,
)

TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip
_DEPTHS_D = (18, 26, 34, 50, 101, 152, 200)
# timm's model name -> ours: its ResNet (torchvision's keys, ResNet-D's deep stem) and its BatchNorm ResNetV2.
TIMM_MODELS = {
    **{name: name for name in (*TORCHVISION_MODELS, "resnet26", "resnet200", *(f"resnet{d}d" for d in _DEPTHS_D))},
    **{f"resnetv2_{d}{v}": f"preact_resnet{d}{v}" for d in (18, 34, 50, 101, 152) for v in ("", "d")},
}
_NOT_TIMM = (
    "timm's BiT resnetv2_*_bit and resnetv2_50d_gn/evos/frn (GroupNorm, EvoNorm, FRN, weight-standardised "
    "convolutions), the c/s/t stems and anti-aliased resnetaa/resnetblur have no counterpart here"
)


class ConversionError(UserError, ValueError):
    """The state dict does not fit the model: keys missing, unexpected or misshapen
    (`problems`: each of them, in the state dict's order, the missing last)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict from ``.safetensors`` (no torch needed) or
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


def _torchvision_module(name: str, avg_down: bool) -> tuple[str, ...] | None:
    """A torchvision (or timm ResNet) module name -> our module path; None if it has none."""
    fixed = {
        "conv1": ("stem_conv",), "bn1": ("stem_bn",), "fc": ("head",),
        # timm's deep stem: Sequential(conv, BN, ReLU, conv, BN, ReLU, conv), then bn1
        "conv1.0": ("stem_conv1",), "conv1.1": ("stem_bn1",), "conv1.3": ("stem_conv2",), "conv1.4": ("stem_bn2",),
        "conv1.6": ("stem_conv3",),
    }  # fmt: skip
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)", name)
    if not m:
        return None
    shortcut = ("downsample.1", "downsample.2") if avg_down else ("downsample.0", "downsample.1")  # D: pool first
    part = dict(zip(shortcut, ("shortcut_conv", "shortcut_bn"))).get(m[3], m[3])
    return (f"stage{m[1]}", f"block{m[2]}", part)


def _resnetv2_module(name: str, avg_down: bool) -> tuple[str, ...] | None:
    """A timm ResNetV2 module name -> our module path; None if it has none."""
    fixed = {"stem.conv": ("stem_conv",), "norm": ("final_bn",), "head.fc": ("head",)}
    fixed.update({f"stem.conv{k}": (f"stem_conv{k}",) for k in (1, 2, 3)})
    fixed.update({f"stem.norm{k}": (f"stem_bn{k}",) for k in (1, 2)})
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(conv\d|norm\d|downsample\.conv)", name)
    if not m:
        return None
    part = "shortcut_conv" if m[3] == "downsample.conv" else m[3].replace("norm", "bn")
    return (f"stage{int(m[1]) + 1}", f"block{m[2]}", part)


def _jax_path(key: str, module: Callable[[str], tuple[str, ...] | None]) -> tuple[str, tuple[str, ...], str] | None:
    """A state-dict key -> (collection, module path, variable name); None for ignored keys."""
    *parts, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    path = module(".".join(parts))
    if path is None:
        return ("unknown", (".".join(parts),), leaf)
    conv = path[-1].startswith(("conv", "stem_conv", "shortcut_conv"))
    if leaf == "weight":
        return ("params", path, "kernel" if conv or path == ("head",) else "scale")
    if leaf == "bias":
        return ("params", path, "bias")
    if leaf in ("running_mean", "running_var"):
        return ("batch_stats", path, {"running_mean": "mean", "running_var": "var"}[leaf])
    return ("unknown", path, leaf)


def _to_jax_layout(value: np.ndarray, name: str, want: tuple[int, ...]) -> np.ndarray:
    if value.ndim == 4 and len(want) == 2 and value.shape[2:] == (1, 1):  # a 1x1 convolution as the dense head
        value = value[:, :, 0, 0]
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and name == "kernel":  # (out, in) -> (in, out)
        return value.T
    return value


def _convert(state_dict: Mapping[str, Any], name: str, num_classes: int | None, module: Callable, head: str) -> dict:
    """`state_dict` as the variables of ``models.create(name, num_classes)``, keys mapped by
    ``module(torch module name, avg_down)``; num_classes defaults to the rows of `head`."""
    state = {k: np.array(v, np.float32) for k, v in state_dict.items()}  # a copy: torch updates in place
    if num_classes is None and head in state:
        num_classes = state[head].shape[0]
    model = models.create(name, num_classes=num_classes)
    module = functools.partial(module, avg_down=model.avg_down)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False))
    expected = {
        (col, tuple(getattr(p, "key", p) for p in path[:-1]), path[-1].key): leaf.shape
        for col in target
        for path, leaf in jax.tree_util.tree_leaves_with_path(target[col])
    }
    out: dict = {"params": {}, "batch_stats": {}}
    problems, found = [], set()
    for key, value in state.items():
        mapped = _jax_path(key, module)
        if mapped is None:
            continue
        col, path, leaf = mapped
        if (col, path, leaf) not in expected:
            problems.append(f"unexpected key {key!r}")
            continue
        want = tuple(expected[(col, path, leaf)])
        value = _to_jax_layout(value, leaf, want)
        found.add((col, path, leaf))
        if value.shape != want:
            problems.append(f"{key!r}: shape {tuple(state[key].shape)} does not fit {'/'.join(path)}/{leaf} {want}")
            continue
        node = out[col]
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    for col, path, leaf in sorted(set(expected) - found):
        problems.append(f"missing {'/'.join(path)}/{leaf} ({col})")
    if problems:
        kinds = {"missing": sum(p.startswith("missing") for p in problems[1:]),
                 "unexpected": sum(p.startswith("unexpected") for p in problems[1:])}  # fmt: skip
        kinds["of another shape"] = len(problems) - 1 - sum(kinds.values())
        others = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)
        more = f"; {len(problems) - 1} more do not fit ({others})" if len(problems) > 1 else ""
        head = f"state dict does not fit {name} ({model.num_classes} classes)"
        raise ConversionError(f"{head}: {problems[0]}{more}{_what_fits(state, name)}", problems)
    return out


def _architecture(state: Mapping[str, Any]) -> tuple | None:
    """(blocks per stage, bottleneck, groups, width per group, deep stem, ResNet-D's
    projections, pre-activation) read from a state dict's keys and shapes, as
    `_model_architecture` reads them from a model; None if they are not a ResNet's."""
    preact = any(k.startswith("stages.") for k in state)  # timm's ResNetV2
    pattern, first = ((r"stages\.(\d)\.blocks\.(\d+)\.", "stages.0.blocks.0.") if preact
                      else (r"layer(\d)\.(\d+)\.", "layer1.0."))  # fmt: skip
    blocks: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(pattern, key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if not blocks:
        return None
    conv2 = state.get(first + "conv2.weight")
    if conv2 is None or np.ndim(conv2) != 4:
        return None
    bottleneck = first + "conv3.weight" in state
    groups = max(1, conv2.shape[0] // conv2.shape[1])
    deep = "stem.conv1.weight" in state if preact else "conv1.0.weight" in state
    avg_down = deep if preact else any(k.startswith("layer2.0.downsample.2.") for k in state)
    sizes = tuple(len(blocks[i]) for i in sorted(blocks))
    return sizes, bottleneck, groups, conv2.shape[0] // groups if bottleneck else 64, deep, avg_down, preact


@functools.cache
def _model_architecture(name: str) -> tuple:
    """`_architecture`'s facts of our model `name`."""
    model = models.create(name)
    block = getattr(model.block, "__name__", "")
    bottleneck = "Bottleneck" in block
    return (tuple(model.stage_sizes), bottleneck, model.groups, model.base_width if bottleneck else 64,
            model.stem == "deep", model.avg_down, "PreAct" in block)  # fmt: skip


def _what_fits(state: Mapping[str, Any], name: str) -> str:
    """``; its shapes are those of torchvision's resnet18 (...)``: the convertible
    models whose architecture the state dict's shapes are ("" if none, or `name`'s own)."""
    facts = _architecture(state)
    if facts is None or facts == _model_architecture(name):
        return ""
    candidates = [("torchvision", n, n) for n in TORCHVISION_MODELS] + [("timm", *n) for n in TIMM_MODELS.items()]
    fits = [(source, theirs) for source, theirs, ours in candidates if _model_architecture(ours) == facts]
    blocks = f"blocks per stage {'-'.join(map(str, facts[0]))}, {'bottleneck' if facts[1] else 'basic'} blocks"
    if not fits:
        return f"; its shapes ({blocks}) are those of no model that converts"
    listed = " or ".join(f"{source}'s {theirs}" for source, theirs in fits[:3])
    return f"; its shapes ({blocks}) are those of {listed}: python -m resnet_jax.convert {fits[0][0]} {fits[0][1]} ..."


def model_for(source: str, name: str) -> str:
    """Our model for `source`'s ("torchvision" or "timm") model `name`.

    Raises:
      ConfigError: `name` has no counterpart here (the message lists those that have).
    """
    if source == "timm" and name in TIMM_MODELS:
        return TIMM_MODELS[name]
    if source == "timm":
        raise ConfigError(f"no counterpart for timm's {name!r}; convertible: {', '.join(TIMM_MODELS)}. {_NOT_TIMM}")
    if name not in TORCHVISION_MODELS:
        hint = f" (timm's weights: python -m resnet_jax.convert timm {name} ...)" if name in TIMM_MODELS else ""
        raise ConfigError(
            f"no torchvision counterpart for {name!r}; convertible: {', '.join(TORCHVISION_MODELS)}{hint}"
        )
    return name


def from_torchvision(state_dict: Mapping[str, Any], name: str, num_classes: int | None = None) -> dict:
    """Converts a torchvision state dict into ``{"params", "batch_stats"}`` of
    ``models.create(name, num_classes)`` (num_classes: from ``fc.weight``).

    Raises:
      ConversionError: listing every missing, unexpected and misshapen key.
    """
    return _convert(state_dict, model_for("torchvision", name), num_classes, _torchvision_module, "fc.weight")


def from_timm(state_dict: Mapping[str, Any], name: str, num_classes: int | None = None) -> dict:
    """Converts the state dict of timm's model `name` (e.g. "resnet50d", "resnetv2_50")
    into ``{"params", "batch_stats"}`` of ``models.create(model_for("timm", name), num_classes)``
    (num_classes: from the classifier's weight).

    Raises:
      ConversionError: listing every missing, unexpected and misshapen key.
    """
    ours = model_for("timm", name)
    if name.startswith("resnetv2_"):
        return _convert(state_dict, ours, num_classes, _resnetv2_module, "head.fc.weight")
    return _convert(state_dict, ours, num_classes, _torchvision_module, "fc.weight")


def write_checkpoint(
    variables: dict,
    name: str,
    out_dir: str,
    class_names: list[str] | None = None,
    preprocessing: weights.Preprocessing | None = None,
    source: str = "torchvision",
    overwrite: bool = False,
) -> None:
    """Writes `variables` of model `name` as a step-0 checkpoint that
    `resnet_jax.restore(out_dir)` loads, with metadata naming the weights'
    `source` and the preprocessing they are evaluated with (`preprocessing`,
    default: torchvision's IMAGENET1K_V1 one: ImageNet mean and std, 224 of 256).
    It is written beside `out_dir` and swapped in when complete; a stop (SIGTERM,
    Ctrl-C) during the checkpoint's save or the swap waits for its end.

    Raises:
      ConfigError: `out_dir` is neither new nor empty nor (with `overwrite`) an
        earlier conversion; nothing in it is changed.
      OutputWriteError: it cannot be written (a read-only folder, a full disk, a
        parent that is a file); `out_dir` is as it was.
    """
    from resnet_jax.training.checkpoint import Checkpointer
    from resnet_jax.training.metadata import weights_metadata

    num_classes = variables["params"]["head"]["kernel"].shape[1]
    class_names = class_names or [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for a head of {num_classes} classes")
    prep = preprocessing or weights.preprocessing("torchvision", "resnet50")[1]
    metadata = weights_metadata(
        name, class_names, prep.image_size, prep.mean, prep.std, prep.crop_fraction, source=source
    )
    state = {"step": np.zeros((), np.int32), **variables}
    out_dir = os.path.abspath(out_dir)
    earlier = check_out_dir(out_dir, overwrite)
    kept = f"the earlier conversion in {out_dir} is as it was" if earlier else "nothing was written"
    tmp = outputs.temporary(out_dir, "tmp")
    done = False
    try:
        _check_room(out_dir, state, kept)
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        # A stop waits for the save's end (a second or two): raised inside Orbax's asyncio loop, it would leave
        # TensorStore's threads writing, through a closed loop (a traceback each), into the folder being removed.
        with stops_held():
            ckpt = Checkpointer(tmp, async_save=False)
            try:
                ckpt.save(_Tree(state), metadata)
                ckpt.wait()
            finally:
                ckpt.close()
        with stops_held():  # the earlier conversion's removal too: a stop ends nothing half-way
            outputs.discard(outputs.swap(tmp, out_dir))
            done = True
    except (KeyboardInterrupt, Exception) as e:
        stop = stop_behind(e)  # also one a library wrapped (Orbax's save: as a write error) or dropped
        if stop is not None and done:
            checkpoints = os.path.join(out_dir, "checkpoints")
            raise type(stop)(f"{stop_name(stop)}: convert stopped after writing {checkpoints} (complete)") from None
        if stop is not None:
            raise stop from None
        if done or isinstance(e, OutputWriteError) or not isinstance(e, OSError):
            raise
        raise cannot_write_output(out_dir, e.__cause__ or e, kept) from None  # the OS's, or the checkpointer's line
    finally:
        if not done:
            outputs.discard(tmp)


def _check_room(out_dir: str, state: dict, kept: str) -> None:
    """Refuses a conversion larger than the free space beside `out_dir`."""
    needed = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
    where = out_dir
    while not os.path.isdir(where):  # the nearest folder that is there
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if free < needed:
        raise OutputWriteError(f"cannot write {out_dir}: the conversion needs up to {needed / 2**20:.1f} MiB and "
                               f"{free / 2**20:.1f} MiB are free; free space, then run the same command again; "
                               f"{kept}")  # fmt: skip


def check_out_dir(out_dir: str, overwrite: bool) -> str | None:
    """The earlier conversion in `out_dir` (its source), with `overwrite`; None for
    a new or empty folder; anything else is refused, and nothing is changed. The
    leftovers of conversions killed midway are removed first, an earlier
    conversion they left moved aside put back (`outputs.remove_leftovers`).

    Raises:
      ConfigError: `out_dir` holds anything else, or an earlier conversion and not `overwrite`.
    """
    outputs.remove_leftovers(out_dir, ("checkpoints",))
    there = outputs.describe(out_dir)
    if there is None:
        return None
    earlier = _earlier_conversion(out_dir) if os.path.isdir(out_dir) and not os.path.islink(out_dir) else None
    if earlier is None:
        raise ConfigError(
            f"{out_dir} is {there} and holds no earlier conversion; convert writes only into a new or empty "
            "folder, or over an earlier conversion: choose another"
        )
    if not overwrite:
        raise ConfigError(f"{out_dir} holds an earlier conversion ({earlier}); pass --overwrite to replace it")
    return earlier


def _earlier_conversion(out_dir: str) -> str | None:
    """The source of the conversion `write_checkpoint` wrote in `out_dir` (only its
    ``checkpoints/0``, whose metadata names a source); None if it holds anything else."""
    from resnet_jax.restore import read_metadata

    checkpoints = os.path.join(out_dir, "checkpoints")
    if os.listdir(out_dir) != ["checkpoints"] or not os.path.isdir(checkpoints) or os.listdir(checkpoints) != ["0"]:
        return None
    try:
        return read_metadata(out_dir, 0)["source"]
    except UserError:
        return None


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
    """``python -m resnet_jax.convert``: every stop is one line (SIGTERM: status 3, Ctrl-C: 130, a
    user error: 2), and an earlier conversion in ``out_dir`` is never lost."""
    parser = ArgumentParser(prog="python -m resnet_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", choices=["torchvision", "timm"])
    parser.add_argument(
        "model", help="the library's model name, optionally with the weights' tag: resnet50.IMAGENET1K_V2, "
        f"resnet50d.ra4_e3600_r224_in1k; torchvision: {', '.join(TORCHVISION_MODELS)}; timm: {', '.join(TIMM_MODELS)}"
    )  # fmt: skip
    parser.add_argument("weights", help="a .safetensors or .pth state dict")
    parser.add_argument("out_dir", help="a new or empty folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in out_dir")
    parser.add_argument("--class-names", help="a text file with one class name per line")
    parser.add_argument("--mean", type=float, nargs=3, help="normalisation mean of RGB in [0, 1] (default: the tag's)")
    parser.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the tag's)")
    parser.add_argument("--crop-fraction", type=float, help="evaluation centre crop / resized short side")
    parser.add_argument("--image-size", type=int, help="evaluation resolution")
    args = parser.parse_args(argv)
    kept = f"{args.out_dir} is as it was" if os.path.lexists(args.out_dir) else "nothing was written"
    with exit_on_user_error(), stops_raise("convert", f"{kept}; the same command runs again"):
        arch, _, tag = args.model.partition(".")
        ours = model_for(args.source, arch)
        check_out_dir(os.path.abspath(args.out_dir), args.overwrite)  # before the weights are read
        given = dict(mean=args.mean, std=args.std, crop_fraction=args.crop_fraction, image_size=args.image_size)
        tagged, prep = weights.preprocessing(args.source, arch, tag, **given)
        names = _read_class_names(args.class_names) if args.class_names else None
        convert = from_torchvision if args.source == "torchvision" else from_timm
        variables = convert(load_state_dict(args.weights), arch)
        write_checkpoint(
            variables, ours, args.out_dir, names, prep, source=f"{args.source} {tagged}", overwrite=args.overwrite
        )
    params = models.count_params(variables)
    print(
        f"wrote {os.path.join(args.out_dir, 'checkpoints')}: {ours} ({args.source} {tagged}), {params:,} parameters; "
        f"preprocessing: {prep.image_size} px of {round(prep.image_size / prep.crop_fraction)}, mean {prep.mean}, "
        f"std {prep.std}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
