"""Forward + backward time of single 3x3 convolutions, for each layer shape of a
CIFAR ResNet, with the filter gradient as one convolution (`lax`) or summed over
batch chunks of several sizes (`resnet_jax.models.conv`, the CPU default).

    python bench/conv_grad.py --batch 128 --chunks 4 8 16 32

Prints one row per layer shape: milliseconds per gradient of both the input and
the filter (median of --repeats calls), and the chunk size that was fastest.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/conv_grad.py")

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import bench  # noqa: E402
from resnet_jax.models import conv as conv_lib  # noqa: E402

# (resolution, in channels, out channels, stride) of the 3x3 convolutions of a CIFAR ResNet.
CIFAR_SHAPES = [(32, 3, 16, 1), (32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2), (8, 64, 64, 1)]


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def grad_fn(conv_fn, stride: int):
    """Jitted gradients w.r.t. input and filter of sum(conv(x, w) * g)."""

    def loss(x, w, g):
        y = conv_fn(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * g)

    return jax.jit(jax.grad(loss, (0, 1)))


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--chunks", type=bench.positive, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--repeats", type=bench.positive, default=11)
    args = p.parse_args(argv)
    print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "batch": args.batch}))
    for resolution, cin, cout, stride in CIFAR_SHAPES:
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (args.batch, resolution, resolution, cin))
        w = jax.random.normal(kw, (3, 3, cin, cout))
        g = jax.random.normal(kg, (args.batch, resolution // stride, resolution // stride, cout))
        row = {"shape": f"{resolution}x{resolution} {cin}->{cout} /{stride}"}
        row["lax_ms"] = round(median_ms(grad_fn(lax.conv_general_dilated, stride), x, w, g, repeats=args.repeats), 2)
        for chunk in args.chunks:
            conv_lib.CPU_FILTER_GRAD_CHUNK = chunk  # both read when the gradient is traced
            conv_lib.MAX_CHUNKS = args.batch
            ms = median_ms(grad_fn(conv_lib.conv_general_dilated, stride), x, w, g, repeats=args.repeats)
            row[f"chunk{chunk}_ms"] = round(ms, 2)
        row["best"] = min((k for k in row if k.endswith("_ms")), key=row.get)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    bench.run(main)
