"""What gradient accumulation costs: the train step with the global batch run
as k micro-batches (``gradient_accumulation_steps`` = k, one update) against
the same batch in one pass (k = 1), on one synthetic batch kept on the device;
the micro-batches unrolled or in a while loop (`steps.ACCUMULATION_LOOPS`).

    python bench/accumulation.py --model cifar_resnet20 --batch 128 --steps 1 2 4
    python bench/accumulation.py --model cifar_resnet20 --batch 128 --steps 1 2 --loop scan --calls 1 --repeats 3

Prints one JSON line: for each k, ms per step (the median of `--repeats`
rounds of `--calls` steps, the variants taking turns, so that each sees the
same load on a shared machine), its ratio to k = 1 (the median of the rounds'
ratios), and the step's temporary buffers as XLA's compiler sized them (MiB:
the activations, what accumulation divides).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/accumulation.py")

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench  # noqa: E402
from resnet_jax import models, parallel  # noqa: E402
from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.training import loop, population, steps  # noqa: E402
from resnet_jax.training.state import create_train_state  # noqa: E402


def build(model_name: str, batch: int, resolution: int, micro_batches: int, micro_loop: str, calls: int):
    """The compiled step of `micro_batches` micro-batches, warmed up: (``round()``
    -> seconds a step over `calls` steps, MiB of temporary buffers)."""
    c = default_config()
    c.model, c.batch_size, c.gradient_accumulation_steps = model_name, batch, micro_batches
    mesh = parallel.make_mesh()
    num_classes = 10 if models.family(model_name) == "cifar" else 1000
    model = loop.model_from_config(c, num_classes)
    options = loop.step_options(c, model, num_classes, population.from_config(c), 100, 1000)
    options = dataclasses.replace(options, micro_loop=micro_loop)
    assert options.micro_batches == micro_batches
    holder = {"state": create_train_state(model, options.make_tx({}), resolution, [c.seed], mesh)}
    rng = np.random.default_rng(0)
    data = parallel.shard_batch({"image": rng.integers(0, 256, (batch, resolution, resolution, 3), np.uint8),
                                 "label": rng.integers(0, num_classes, batch).astype(np.int32)}, mesh)  # fmt: skip
    jitted = jax.jit(functools.partial(steps.train_step, hp={}, options=options), donate_argnums=0)
    step = jitted.lower(holder["state"], data).compile()
    temp_mib = step.memory_analysis().temp_size_in_bytes / 2**20

    def round_() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / calls

    round_()
    return round_, temp_mib


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--resolution", type=bench.positive, default=32)
    p.add_argument("--steps", type=bench.positive, nargs="+", default=[1, 2, 4],
                   help="the gradient_accumulation_steps to time")
    p.add_argument("--loop", default="auto", choices=steps.ACCUMULATION_LOOPS, help="how the micro-batches run")
    p.add_argument("--calls", type=bench.positive, default=5, help="steps a round")
    p.add_argument("--repeats", type=bench.positive, default=7, help="rounds")
    args = p.parse_args(argv)
    ks = sorted(set(args.steps) | {1})
    runs = {k: build(args.model, args.batch, args.resolution, k, args.loop, args.calls) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(args.repeats):  # the variants take turns: each sees the same load
        for k, (run, _) in runs.items():
            times[k].append(run())
    here = os.path.dirname(os.path.abspath(__file__))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    result = {"model": args.model, "batch": args.batch, "resolution": args.resolution, "loop": args.loop,
              "loop_resolved": "unroll" if steps.unrolls(args.loop) else "scan",
              "calls": args.calls, "repeats": args.repeats,
              **{f"k{k}_ms": round(float(np.median(t)) * 1e3, 1) for k, t in times.items()},
              **{f"k{k}_ratio": round(float(np.median(np.divide(times[k], times[1]))), 3) for k in ks if k != 1},
              **{f"k{k}_temp_mib": round(mib, 1) for k, (_, mib) in runs.items()},
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "jax": jax.__version__,
              "commit": commit.stdout.strip()}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    bench.run(main)
