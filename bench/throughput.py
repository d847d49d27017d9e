"""Training and evaluation throughput of any registered model on synthetic,
on-device data: images/s, compile time, peak device memory and model FLOPs
utilisation (MFU); optionally beside PyTorch on the same machine.

    python bench/throughput.py --model cifar_resnet20 --batch 128 --torch
    python bench/throughput.py --model resnet50 --batch 256 --dtype bfloat16 --resolution 224 --torch
    python bench/throughput.py --model cifar_resnet20 --batch 128 --data <cifar10 folder> --pipeline device
    python bench/throughput.py --model cifar_resnet20 --batch 128 --seeds 8
    python bench/throughput.py --model cifar_resnet20 --batch 128 --torch --torch-modes eager default reduce-overhead

With --data, the same train step also runs fed by the real input pipeline
(`--pipeline device`: the on-device one; `tfds`: tf.data over the folder),
as the trainer feeds it, and that throughput is reported beside the synthetic one.
``--seeds K`` trains K seeds together (a stacked state, one vmapped step: what
``config.num_seeds`` and the study's ``--seeds`` do) and reports the images/s
of all seeds together and per seed. ``--start-at T`` waits, once compiled, until
the Unix time T before timing, so that several processes started together
time the same seconds.

MFU counts 3 x 2 x MACs FLOPs per training image (forward + backward) against
--peak-tflops (default: 989 for an H100/H200's dense bf16, 67 for their
float32; on a CPU pass the machine's peak, or read the images/s alone).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/throughput.py")

import functools
import json
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench  # noqa: E402
from resnet_jax import models, parallel  # noqa: E402
from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.data import make_pipeline  # noqa: E402
from resnet_jax.models.profile import default_resolution  # noqa: E402
from resnet_jax.training import optim, population, steps  # noqa: E402
from resnet_jax.training.compiled import compile_train_step  # noqa: E402
from resnet_jax.training.metrics import empty_window  # noqa: E402
from resnet_jax.training.state import create_train_state  # noqa: E402

PEAK_TFLOPS = {("gpu", "bfloat16"): 989.0, ("gpu", "float32"): 67.0}


def _time(fn, n: int, start_at: float = 0.0) -> float:
    jax.block_until_ready(fn())
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def measure(
    model_name: str, batch: int, resolution: int, dtype: str, num_steps: int, num_classes: int, steps_per_call: int = 1,
    model_kwargs: dict | None = None, pipeline: Any = None, seeds: int = 1, start_at: float = 0.0,
    member_batching: str = "auto",
) -> dict:
    """JAX train/eval images/s, compile seconds, peak memory and MFU.

    ``steps_per_call > 1`` runs that many train steps inside one jitted call
    (`lax.scan`), which takes the host's per-step dispatch out of the figure.
    With a `pipeline` (``make_pipeline``'s), the step is also timed fed by it.
    ``seeds > 1`` trains that many seeds together, each on its own batch; the
    images/s count the images of all seeds."""
    c = default_config()
    mesh = pipeline.mesh if pipeline is not None else parallel.make_mesh()  # one mesh for the state and the data
    parallel.check_batch_size(batch, mesh)
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    model_kwargs = model_kwargs or {}
    model = models.create(model_name, num_classes=num_classes, dtype=compute, **model_kwargs)
    tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 100, 1000))
    state = population.restacked(create_train_state(model, tx, resolution, list(range(seeds)), mesh), seeds)
    rng = np.random.default_rng(0)
    batch_data = parallel.shard_batch(
        {
            "image": rng.integers(0, 256, (batch, resolution, resolution, 3), np.uint8),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
            "mask": np.ones(batch, np.float32),
        },
        mesh,
    )
    options = steps.StepOptions(mean=tuple(c.data.mean), std=tuple(c.data.std), dtype=compute, label_smoothing=0.0,
                                ema_decay=0.0, max_loss=math.inf, make_tx=lambda hp: tx)  # fmt: skip
    # K seeds, each on its own batch (the synthetic batch shifted by the seed's index)
    batch_data = {k: jnp.stack([jnp.roll(v, i, axis=0) for i in range(seeds)]) for k, v in batch_data.items()}
    one_step = parallel.over_members(lambda s, b: steps.train_step(s, b, {}, options), (0, 0), member_batching)

    def train_steps(state, batch):
        return jax.lax.scan(lambda s, _: one_step(s, batch), state, length=steps_per_call)

    train = jax.jit(one_step if steps_per_call == 1 else train_steps, donate_argnums=0)
    evaluate = jax.jit(
        functools.partial(
            steps.eval_step, apply_fn=model.apply, mean=c.data.mean, std=c.data.std, dtype=compute,
            num_classes=num_classes,
        )
    )  # fmt: skip
    t0 = time.perf_counter()
    train_compiled = train.lower(state, batch_data).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = train_compiled(holder["state"], batch_data)
        return metrics

    train_s = _time(train_once, max(1, num_steps // steps_per_call), start_at) / steps_per_call / seeds
    if pipeline is not None and seeds > 1:
        raise ValueError("--data times one seed's pipeline; leave out --seeds")
    pipeline_s = _time_pipeline(pipeline, options, holder, num_steps) if pipeline is not None else None
    variables = jax.tree_util.tree_map(lambda x: x[0], holder["state"].variables())
    eval_batch = {k: v[0] for k, v in batch_data.items()}
    eval_s = _time(lambda: evaluate(variables, eval_batch), num_steps)
    macs = models.profile(model_name, resolution, num_classes=num_classes)["macs"]
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    result = {
        "model": model_name, "batch": batch, "resolution": resolution, "dtype": dtype, "steps_per_call": steps_per_call,
        "model_kwargs": model_kwargs, "seeds": seeds, "member_batching": member_batching,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{jax.device_count()} x {device.device_kind}", "jax": jax.__version__,
        "train_images_per_s": batch / train_s, "train_images_per_s_per_seed": batch / train_s / seeds,
        "eval_images_per_s": batch / eval_s,
        "compile_s": compile_s, "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
        "train_tflops": 6 * macs * batch / train_s / 1e12,
    }  # fmt: skip
    if pipeline_s is not None:
        result["pipeline_train_images_per_s"] = batch / pipeline_s
    return result


def _time_pipeline(pipeline: Any, options: steps.StepOptions, holder: dict, num_steps: int) -> float:
    """Seconds per train step fed by `pipeline`, as the trainer's loop feeds it
    (after 2 steps of warm-up and compilation)."""
    train = compile_train_step(options, pipeline, {}, 1)
    items = pipeline.train_epoch(0)
    state = population.stored(holder["state"], 1)  # as the trainer holds one network's
    if pipeline.steps_per_epoch < num_steps + 2:
        raise ValueError(f"the data has {pipeline.steps_per_epoch} batches per epoch; --steps needs {num_steps + 2}")
    window = empty_window(1)
    for _ in range(2):
        state, window = train(state, window, next(items))
    jax.block_until_ready(window)
    t0 = time.perf_counter()
    for _ in range(num_steps):
        state, window = train(state, window, next(items))
    jax.block_until_ready(window)
    holder["state"] = population.restacked(state, 1)
    return (time.perf_counter() - t0) / num_steps


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--resolution", type=int, default=0, help="default: 32 (CIFAR) or 224 (ImageNet)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--steps", type=bench.positive, default=20)
    p.add_argument("--steps-per-call", type=bench.positive, default=1, help="train steps per jitted call (lax.scan)")
    p.add_argument("--num-classes", type=int, default=0)
    p.add_argument("--model-kwargs", type=json.loads, default={}, help='e.g. \'{"bn_one_pass": true}\'')
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--seeds", type=bench.positive, default=1, help="seeds trained together in one compiled step")
    p.add_argument("--member-batching", choices=["auto", "vmap", "loop"], default="auto",
                   help="several seeds: vmap (the same kernels), loop (one after another in the step)")  # fmt: skip
    p.add_argument("--start-at", type=float, default=0.0, help="Unix time to start timing at, once compiled")
    p.add_argument("--torch", action="store_true", help="also time PyTorch training the same architecture")
    p.add_argument("--torch-modes", nargs="+", default=["eager"], choices=["eager", "default", "reduce-overhead",
                   "max-autotune"], help="PyTorch eager and/or torch.compile modes")  # fmt: skip
    p.add_argument("--data", default="", help="an image folder root/{train,test}/<class>/: also time the real pipeline")
    p.add_argument("--pipeline", choices=["device", "tfds"], default="device")
    args = p.parse_args(argv)
    if args.torch:  # leave GPU memory to PyTorch: JAX would otherwise preallocate 75% of it
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    resolution = args.resolution or default_resolution(args.model)
    num_classes = args.num_classes or (10 if models.family(args.model) == "cifar" else 1000)
    pipeline = None
    if args.data:
        bench.existing(args.data, "--data: an image folder root/{train,test}/<class>/")
        c = default_config()
        c.batch_size, c.data.path, c.data.pipeline, c.data.image_size = args.batch, args.data, args.pipeline, resolution
        pipeline = make_pipeline(c, parallel.make_mesh())
        num_classes = pipeline.info.num_classes
    r = measure(
        args.model, args.batch, resolution, args.dtype, args.steps, num_classes, args.steps_per_call, args.model_kwargs,
        pipeline, args.seeds, args.start_at, args.member_batching,
    )
    peak = args.peak_tflops or PEAK_TFLOPS.get((jax.devices()[0].platform, args.dtype))
    if peak:
        r["mfu"] = r["train_tflops"] / peak
    if args.torch:
        import torch

        from bench import torch_peer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        r["torch"] = torch.__version__
        for mode in args.torch_modes:
            suffix = "" if mode == "eager" else "_compile_" + mode.replace("-", "_")
            r[f"torch{suffix}_train_images_per_s"] = images_per_s = torch_peer.train_throughput(
                args.model, args.batch, resolution, args.steps, args.dtype, num_classes, device, mode
            )
            r[f"ratio_jax_over_torch{suffix}"] = r["train_images_per_s"] / images_per_s
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, indent=1))


if __name__ == "__main__":
    bench.run(main)
