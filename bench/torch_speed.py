"""PyTorch training images/s alone (no JAX in the process), beside bench/throughput.py's JAX figure:

    python bench/torch_speed.py --model resnet50 --batch 256 --resolution 224 --dtype bfloat16 --mode eager

The same measurement as ``bench/throughput.py --torch`` (`bench.torch_peer.train_throughput`: channels-last,
bf16 autocast where asked, eager or ``torch.compile``), without timing JAX again first. Prints one JSON object.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/torch_speed.py")

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bench  # noqa: E402
from bench.torch_peer import MODES, train_throughput  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--resolution", type=int, default=0, help="default: 32 (CIFAR) or 224 (ImageNet)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--steps", type=bench.positive, default=20)
    p.add_argument("--mode", choices=MODES, default="eager", help="eager, or a torch.compile mode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    cifar = args.model.startswith("cifar_")
    resolution = args.resolution or (32 if cifar else 224)
    images_per_s = train_throughput(
        args.model, args.batch, resolution, args.steps, args.dtype, 10 if cifar else 1000, args.device, args.mode
    )
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(json.dumps({
        "model": args.model, "batch": args.batch, "resolution": resolution, "dtype": args.dtype, "mode": args.mode,
        "steps": args.steps, "torch": torch.__version__, "device": name, "train_images_per_s": round(images_per_s, 2),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    bench.run(main)
