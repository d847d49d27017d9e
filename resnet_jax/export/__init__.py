"""Export a trained model out of JAX: StableHLO, ONNX, a TF SavedModel, or a torchvision/timm state dict.

    python -m resnet_jax.export --workdir runs/r50 --format onnx --out r50.onnx
    python -m resnet_jax.export --workdir runs/r50 --step best --format stablehlo --out r50.stablehlo \\
        --preprocess uint8 --dtype bfloat16
    python -m resnet_jax.export --workdir runs/pop --member 2 --format savedmodel --out r50_savedmodel
    python -m resnet_jax.export --workdir converted/r50 --format torchvision --out r50.safetensors

Formats (docs/export.md):

* ``stablehlo``: `jax.export` serialized (bytes): ``jax.export.deserialize(data).call(images)``
  in any process with jax, no resnet_jax needed; batch dimension symbolic; float32 or bfloat16;
  lowered for CPU, CUDA and TPU.
* ``onnx``: an ONNX graph (opset 17) with a dynamic batch, built from the
  model's variables with the ``onnx`` package (`onnx_graph`); float32.
* ``savedmodel``: a TensorFlow SavedModel (a folder; TensorFlow from the ``data``
  extra) whose ``serving_default`` signature runs the same StableHLO
  (``jax2tf``, an ``XlaCallModule`` op); ``tf.saved_model.load`` reads it.
* ``torchvision`` / ``timm``: a ``.safetensors`` state dict that
  ``torchvision.models.<arch>(num_classes=N)`` / ``timm.create_model(<name>, num_classes=N)``
  loads with ``strict=True`` (`state_dict`: `resnet_jax.convert` reversed).

The graph formats take NHWC images of the checkpoint's size and return float32
logits in inference mode (the running batch-norm statistics; the EMA weights
with ``--ema``). ``--preprocess normalize`` bakes the checkpoint's mean and std
in (input: RGB in [0, 1]); ``--preprocess uint8`` also the scaling (input:
uint8 pixels). Beside every artifact, ``<out>.json`` gives the input's layout,
shape, dtype and preprocessing, the resize the model was evaluated with, the
class names and the source checkpoint and step. Both are written under a
temporary name and renamed when complete: an export that fails or is stopped
(SIGTERM, Ctrl-C) leaves nothing, and one killed (SIGKILL) leaves temporary
files that the next export to the same path removes.

``overwrite`` replaces only an earlier export, recognised by its record
(``<out>.json``): never a training run's workdir, a population, or a file or
folder that holds anything else.

This package imports no JAX until an export runs (``python -m
resnet_jax.export`` takes its signals first).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from resnet_jax import outputs
from resnet_jax.errors import (
    ArgumentParser,
    ConfigError,
    ExportError,
    MissingDependencyError,
    Preempted,
    cannot_write_output,
    exit_on_user_error,
    stop_behind,
    stop_name,
    stops_held,
    stops_raise,
)

if TYPE_CHECKING:
    import jax
    import numpy as np

FORMATS = ("stablehlo", "onnx", "savedmodel", "torchvision", "timm")
PREPROCESS = ("none", "normalize", "uint8")
DTYPES = ("float32", "bfloat16")
PLATFORMS = ("cpu", "cuda", "tpu")
LOWERING_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for, on any machine
# What a SavedModel folder holds (tf.saved_model.save); a folder with anything else is not an export.
SAVEDMODEL_FILES = {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "fingerprint.pb"}
_FLOAT32_ONLY = ("onnx", "torchvision", "timm")
# What each format imports, and the extra that installs it.
_NEEDS = {"onnx": (("onnx",), "export"), "savedmodel": (("tensorflow",), "data"), "torchvision": ((), ""),
          "timm": ((), ""), "stablehlo": ((), "")}  # fmt: skip

__all__ = ["ExportError", "FORMATS", "export", "main"]


def _installed(module: str) -> bool:
    """Whether `module` can be imported (found without importing it: TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check_request(format: str, dtype: str, preprocess: str, platforms: Sequence[str], out: str) -> None:
    """Refuses, before any checkpoint is read, what cannot be exported (`_check_out`: what is at `out`)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
    if preprocess not in PREPROCESS:
        raise ConfigError(f"unknown preprocess {preprocess!r}; one of: {', '.join(PREPROCESS)}")
    unknown = [p for p in platforms if p not in LOWERING_PLATFORMS]
    if unknown or not platforms:
        hint = " (a GPU is cuda or rocm)" if "gpu" in unknown else ""
        raise ConfigError(f"unknown platform {', '.join(map(repr, unknown)) or 'list (empty)'}{hint}; platforms: "
                          f"{', '.join(LOWERING_PLATFORMS)}, any of them on any machine")  # fmt: skip
    if dtype != "float32" and format in _FLOAT32_ONLY:
        raise ExportError(f"the {format} format is float32 only (bfloat16: --format stablehlo or savedmodel)")
    if preprocess != "none" and format in ("torchvision", "timm"):
        raise ExportError(
            f"a {format} state dict holds weights, not computation: preprocessing cannot be baked in "
            f"(the mean and std are in {out}.json)"
        )
    modules, extra = _NEEDS[format]
    for module in modules:
        if not _installed(module):
            raise MissingDependencyError(f"the {format} format needs {module}: pip install 'resnet-jax-flax[{extra}]'")


def _check_out(out: str, overwrite: bool) -> None:
    """Refuses an `out` that holds anything but an earlier export (recognised by its
    record, ``<out>.json``), and an earlier export without `overwrite`."""
    record = _read_record(out + ".json")
    if os.path.lexists(out + ".json") and record is None:
        raise ConfigError(f"{out}.json exists and is not an export's record: export writes its record there and "
                          "replaces only an earlier export; choose another --out")  # fmt: skip
    there = outputs.describe(out)
    if there is None and record is None:
        return
    folder = os.path.isdir(out) and not os.path.islink(out)
    artifact = there == "a file" or (folder and set(os.listdir(out)) <= SAVEDMODEL_FILES)
    if there is not None and (record is None or not artifact):
        raise ConfigError(f"{out} is {there}, not an earlier export (recognised by its record, {out}.json): export "
                          "replaces only its own; choose another --out")  # fmt: skip
    if not overwrite:
        raise ConfigError(f"{out} holds an earlier export ({record['format']} of {record['model']}, written "
                          f"{record['exported']}); pass overwrite=True (--overwrite) to replace it")  # fmt: skip


def _read_record(path: str) -> dict | None:
    """The record an export wrote at `path` (``<out>.json``), or None if `path` is none."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    keys = ("format", "model", "source", "exported", "input")
    if not isinstance(record, dict) or not all(k in record for k in keys) or record["format"] not in FORMATS:
        return None
    return record


def inference_function(model: Any, variables: dict, preprocess: str, mean: Any, std: Any) -> Callable:
    """``images -> float32 logits`` of `model` in inference mode, `variables` closed
    over, with `preprocess` ("none", "normalize", "uint8") applied first."""
    import numpy as np

    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def logits(images: jax.Array) -> jax.Array:
        if preprocess == "uint8":
            from resnet_jax.data.augment import normalize

            images = normalize(images, mean, std)
        elif preprocess == "normalize":
            images = (images - mean32) / std32
        return model.apply(variables, images, train=False)

    return logits


def _input_spec(preprocess: str, size: int, batch: Any) -> jax.ShapeDtypeStruct:
    import jax
    import jax.numpy as jnp

    dtype = jnp.uint8 if preprocess == "uint8" else jnp.float32
    return jax.ShapeDtypeStruct((batch, size, size, 3), dtype)


def _write_stablehlo(path: str, fn: Callable, spec: Callable, platforms: Sequence[str]) -> None:
    import jax

    (batch,) = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec(batch))
    with open(path, "wb") as f:
        f.write(exported.serialize())


def _readable_by_tensorflow(exported: jax.export.Exported) -> jax.export.Exported:
    """`exported` with its module serialized at StableHLO's oldest version, which every TensorFlow's
    XlaCallModule reads. jax serializes at the version of 4 weeks before its release: 1.15 for jax 0.10, 1.22
    for jax 0.12, whose ``custom_call_v2`` (its shape assertions) TensorFlow 2.21 (StableHLO 1.13.7) cannot read."""
    import dataclasses

    from jaxlib.mlir.dialects import stablehlo

    data = stablehlo.serialize_portable_artifact_str(exported.mlir_module(), stablehlo.get_minimum_version())
    return dataclasses.replace(exported, mlir_module_serialized=data)


def _write_savedmodel(path: str, fn: Callable, spec: Callable, platforms: Sequence[str]) -> None:
    import jax
    import tensorflow as tf
    from jax.experimental.jax2tf.jax2tf import _run_exported_as_tf  # jax2tf.convert's op, on an `Exported`

    (batch,) = jax.export.symbolic_shape("batch")
    exported = _readable_by_tensorflow(jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec(batch)))
    example = spec(1)
    module = tf.Module()
    signature = [tf.TensorSpec((None, *example.shape[1:]), tf.as_dtype(example.dtype), name="images")]
    module.serve = tf.function(lambda images: {"logits": _run_exported_as_tf([images], exported)[0]},
                               input_signature=signature, autograph=False)  # fmt: skip
    try:
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    except tf.errors.OpError as e:  # TensorFlow's own file errors: an OSError's one line (the reason in words)
        raise OSError(e.message.split("\n")[0]) from None


@contextlib.contextmanager
def _tensorflow_quiet() -> Iterator[None]:
    """Inside: TensorFlow's C++ lines kept off stderr (absl's "All log messages
    before absl::InitializeLog() ..." and oneDNN's notice, at its import and again
    as it saves: TensorFlow 2.21 prints them whatever TF_CPP_MIN_LOG_LEVEL says),
    so that a stop or a write error is the command's one line; they are shown
    if the write fails otherwise (a bug)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except (OSError, Preempted, KeyboardInterrupt):
            raise
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _write_onnx(path: str, model: Any, variables: dict, info: dict, preprocess: str) -> None:
    import onnx

    from resnet_jax.export import onnx_graph

    proto = onnx_graph.build(model, variables, info["image_size"], preprocess, info["mean"], info["std"],
                             doc=f"{info['model']}, step {info['step']}")  # fmt: skip
    onnx.save(proto, path)


def _write_state_dict(path: str, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(state, path)


def _write_atomically(out: str, write: Callable[[str], None], description: dict) -> None:
    """`write(temporary path)`, the JSON beside it, then both renamed into place
    (the record first: an export killed between the two renames leaves one that
    the same command replaces); on any failure or stop the temporary files are
    removed and `out` is as it was. A stop that comes during the renames waits
    for their end."""
    out = os.path.abspath(out)
    kept = f"{out} is as it was" if os.path.lexists(out) else "nothing was written"
    tmp = outputs.temporary(out, "tmp")
    tmp_json = tmp + ".json"
    done = False
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write(tmp)
        with open(tmp_json, "w") as f:
            json.dump(description, f, indent=2)
        with stops_held():  # the earlier SavedModel folder's removal too: a stop ends nothing half-way
            os.replace(tmp_json, out + ".json")
            outputs.discard(outputs.swap(tmp, out))
            done = True
    except (KeyboardInterrupt, Exception) as e:
        stop = stop_behind(e)  # also one a library wrapped or dropped
        if stop is not None and done:
            line = f"{stop_name(stop)}: export stopped after writing {out} and {out}.json (complete)"
            raise type(stop)(line) from None
        if stop is not None:
            raise stop from None
        if done or not isinstance(e, OSError):
            raise
        raise cannot_write_output(out, e, kept) from None
    finally:
        if not done:
            outputs.discard(tmp)
            outputs.discard(tmp_json)


def _describe(format: str, info: dict, workdir: str, ema: bool, dtype: str, preprocess: str,
              platforms: Sequence[str], library_model: str | None) -> dict[str, Any]:  # fmt: skip
    """The JSON beside an artifact: what a server needs to feed it and where it came from."""
    size = info["image_size"]
    torch_format = format in ("torchvision", "timm")
    resize = {"method": "bilinear, straight to the size", "to": size}
    if info["centre_crop"]:
        short = round(size / info["crop_fraction"])
        resize = {"method": "short side, bicubic, then centre crop", "short_side": short, "crop": size,
                  "crop_fraction": info["crop_fraction"]}  # fmt: skip
    description: dict[str, Any] = {
        "format": format,
        "model": info["model"],
        "model_kwargs": info["model_kwargs"],
        "num_classes": info["num_classes"],
        "class_names": info["class_names"],
        "input": {
            "name": "images",
            "layout": "NCHW" if torch_format else "NHWC",
            "shape": [None, 3, size, size] if torch_format else [None, size, size, 3],
            "dtype": "uint8" if preprocess == "uint8" else "float32",
            "preprocessing": {
                "none": "normalised RGB: (x / 255 - mean) / std, done by the caller",
                "normalize": "RGB in [0, 1]; (x - mean) / std is in the artifact",
                "uint8": "RGB pixels 0-255; (x / 255 - mean) / std is in the artifact",
            }[preprocess],
            "resize": resize,
        },
        "output": {"name": "logits", "shape": [None, info["num_classes"]], "dtype": "float32"},
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "compute_dtype": dtype,
        "source": {
            "workdir": os.path.abspath(workdir),
            "step": info["step"],
            "member": info.get("member"),
            "ema": ema,
            "weights": info["source"],
            "metrics": info["metrics"],
        },
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if format in ("stablehlo", "savedmodel"):
        description["platforms"] = list(platforms)
    if torch_format:
        call = "torchvision.models." if format == "torchvision" else "timm.create_model("
        description["load"] = (f"{call}{library_model}(num_classes={info['num_classes']})" if format == "torchvision"
                               else f"{call}{library_model!r}, num_classes={info['num_classes']})")  # fmt: skip
        description["load"] += ".load_state_dict(safetensors.torch.load_file(path), strict=True)"
    return description


def export(
    workdir: str,
    format: str,
    out: str,
    *,
    step: int | str | None = "latest",
    member: int | None = None,
    ema: bool = False,
    dtype: str = "float32",
    preprocess: str = "none",
    platforms: Sequence[str] = PLATFORMS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports the model of a checkpoint of `workdir` to `out` in `format`.

    Args:
      workdir: a training run, a converted checkpoint (`resnet_jax.convert`) or
        a member's folder of a population (as `resnet_jax.restore`).
      format: "stablehlo", "onnx", "savedmodel", "torchvision" or "timm" (see the module doc).
      out: the artifact's path (a folder for "savedmodel"); ``<out>.json`` is written beside it.
      step: "latest", "best" or a step number.
      member: which member of a population (as `resnet_jax.restore`).
      ema: export the EMA weights (the run must have kept them).
      dtype: compute dtype, "float32" or "bfloat16" (stablehlo and savedmodel); logits are float32.
      preprocess: "none", "normalize" or "uint8": what the artifact does to its input first.
      platforms: what stablehlo and savedmodel are lowered for.
      overwrite: replace an earlier export at `out` (recognised by its record, ``<out>.json``);
        anything else there is refused.

    Returns:
      The description written to ``<out>.json``.

    Raises:
      UserError: one line naming the problem (no checkpoint, a damaged one, an
        unknown format, a missing dependency, an architecture the format cannot
        express, something else at `out`, a write that failed: `OutputWriteError`).
    """
    _check_request(format, dtype, preprocess, platforms, out)
    outputs.remove_leftovers(out, SAVEDMODEL_FILES)
    _check_out(out, overwrite)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resnet_jax import models
    from resnet_jax.restore import restore

    model, variables, info = restore(workdir, step, ema=ema, member=member)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    model = models.create(info["model"], num_classes=info["num_classes"], **{**info["model_kwargs"],
                                                                             "dtype": getattr(jnp, dtype)})  # fmt: skip
    library_model = None
    if format in ("torchvision", "timm"):
        from resnet_jax.export.state_dict import to_state_dict

        library_model, state = to_state_dict(variables, model, info["model"], format)
        write: Callable[[str], None] = lambda path: _write_state_dict(path, state)  # noqa: E731
    elif format == "onnx":
        write = lambda path: _write_onnx(path, model, variables, info, preprocess)  # noqa: E731
    else:
        fn = inference_function(model, variables, preprocess, info["mean"], info["std"])
        spec = lambda batch: _input_spec(preprocess, info["image_size"], batch)  # noqa: E731
        writer = _write_stablehlo if format == "stablehlo" else _write_savedmodel
        quiet = _tensorflow_quiet if format == "savedmodel" else contextlib.nullcontext

        def write(path: str) -> None:
            with quiet():
                writer(path, fn, spec, platforms)
    description = _describe(format, info, workdir, ema, dtype, preprocess, platforms, library_model)
    _write_atomically(out, write, description)
    return description


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resnet_jax.export``: every stop is one line (SIGTERM: status 3, Ctrl-C: 130, a
    user error: 2), and nothing at ``--out`` is lost."""
    parser = ArgumentParser(prog="python -m resnet_jax.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir, a converted checkpoint or a member")
    parser.add_argument("--step", default="latest", help='"latest", "best" or a step number')
    parser.add_argument("--member", type=int, help="the member of a population (0 ... K - 1)")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="the artifact's path (a folder for savedmodel)")
    parser.add_argument("--ema", action="store_true", help="the EMA weights (if the run kept them)")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (stablehlo, savedmodel)")
    parser.add_argument("--preprocess", default="none", help="none, normalize ([0, 1] RGB in) or uint8 (pixels in)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="stablehlo/savedmodel lowering targets")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    kept = f"{args.out} is as it was" if os.path.lexists(args.out) else "nothing was written"
    with exit_on_user_error(), stops_raise("export", f"{kept}; the same command runs again"):
        description = export(
            args.workdir, args.format, args.out, step=args.step, member=args.member, ema=args.ema, dtype=args.dtype,
            preprocess=args.preprocess, platforms=args.platforms.split(","), overwrite=args.overwrite,
        )  # fmt: skip
    source, spec = description["source"], description["input"]
    member = "" if source["member"] is None else f", member {source['member']}"
    print(f"wrote {args.out} ({args.format}) and {args.out}.json: {description['model']}, step {source['step']}"
          f"{member}; input {spec['layout']} {spec['dtype']} {spec['shape']}")  # fmt: skip
    return 0
