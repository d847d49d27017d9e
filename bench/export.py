"""Export time, file size and inference images/s of each export format against the JAX model's own predict:

    python bench/export.py --model resnet50 --resolution 224 --batch 32 --repeats 1

The weights are torchvision's architecture with random values and random batch-norm statistics, brought in by
`resnet_jax.convert` (the speed does not depend on the values). Each artifact runs in its own runtime
(jax.export, ONNX Runtime, TensorFlow, PyTorch) in this process, one after the other, on the same float32
batch; the JAX figure is `resnet_jax.predict`'s path (a jit of ``model.apply(..., train=False)``), timed
before and after the others, and each ratio is against their mean. Prints one JSON object.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/export.py")

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench  # noqa: E402
import resnet_jax  # noqa: E402
from resnet_jax import convert, weights  # noqa: E402


def images_per_s(run: Callable[[np.ndarray], object], x: np.ndarray, repeats: int, warm_up: bool = True) -> float:
    """The best of `repeats` timed calls, after one untimed (compiling) call where `warm_up`."""
    if warm_up:
        run(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def size_of(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def runners(fmt: str, path: str, model_name: str) -> Callable[[np.ndarray], object]:
    """A function that runs the artifact at `path` on a float32 NHWC batch, in the format's runtime."""
    if fmt == "stablehlo":
        exported = jax.export.deserialize(open(path, "rb").read())
        return lambda x: np.asarray(exported.call(x))
    if fmt == "onnx":
        import onnxruntime

        runner = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: runner.run(["logits"], {"images": x})[0]
    if fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda x: serve(images=tf.constant(x))["logits"].numpy()
    import torch
    import torchvision
    from safetensors.torch import load_file

    net = getattr(torchvision.models, model_name)()
    net.load_state_dict(load_file(path), strict=True)
    net.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()

    return run


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--model", default="resnet50", help="a torchvision architecture that convert maps")
    p.add_argument("--resolution", type=bench.positive, default=224)
    p.add_argument("--batch", type=bench.positive, default=32)
    p.add_argument("--repeats", type=bench.positive, default=3)
    p.add_argument("--formats", default="stablehlo,onnx,savedmodel,torchvision")
    args = p.parse_args(argv)

    import torch
    import torchvision

    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in getattr(torchvision.models, args.model)().state_dict().items()}
    rng = np.random.default_rng(0)
    for key in state:
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, state[key].shape).astype(np.float32)
    x = rng.standard_normal((args.batch, args.resolution, args.resolution, 3)).astype(np.float32)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "converted")
        prep = weights.Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875, args.resolution)
        convert.write_checkpoint(convert.from_torchvision(state, args.model), args.model, workdir, preprocessing=prep)
        model, variables, _ = resnet_jax.restore(workdir)
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
        jax_run = lambda x: np.asarray(apply(variables, x))  # noqa: E731
        reference = jax_run(x)
        jax_before = images_per_s(jax_run, x, args.repeats, warm_up=False)
        for fmt in args.formats.split(","):
            out = os.path.join(tmp, f"model.{fmt}")
            start = time.perf_counter()
            resnet_jax.export(workdir, fmt, out, platforms=["cpu"])
            seconds = time.perf_counter() - start
            run = runners(fmt, out, args.model)
            results[fmt] = {
                "export_s": round(seconds, 2),
                "size_mb": round(size_of(out) / 2**20, 1),
                "images_per_s": images_per_s(run, x, args.repeats),
                "max_abs_diff_vs_jax": float(np.abs(run(x) - reference).max()),
            }
        jax_after = images_per_s(jax_run, x, args.repeats, warm_up=False)
    jax_ips = (jax_before + jax_after) / 2
    for r in results.values():
        r["vs_jax"] = round(r["images_per_s"] / jax_ips, 2)
        r["images_per_s"] = round(r["images_per_s"], 1)
    print(json.dumps({
        "model": args.model, "resolution": args.resolution, "batch": args.batch, "repeats": args.repeats,
        "jax_predict_images_per_s": {"before": round(jax_before, 1), "after": round(jax_after, 1)},
        "formats": results, "jax": jax.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    bench.run(main)
