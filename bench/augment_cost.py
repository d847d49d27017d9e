"""What the batch augmentations cost inside the train step: the step with
torchvision's V2 set (TrivialAugmentWide, random erasing 0.1, mixup 0.2 /
cutmix 1.0, label smoothing 0.1) or timm's RSB A1 set (RandAugment m7, mixup
0.2 / cutmix 1.0, BCE) against the same step without augmentations, on one
synthetic batch kept on the device.

    python bench/augment_cost.py --model cifar_resnet20 --batch 128 --resolution 32
    python bench/augment_cost.py --model resnet50 --batch 32 --resolution 112

    python bench/augment_cost.py --sets mix mix_chunk16 tv2 tv2_sources rsb_a1 rsb_a1_sources
    python bench/augment_cost.py --sets none bn_group16 mix mix_chunk16

Prints one JSON line: ms per step for each set (the median of `--repeats`
rounds of 5 steps, the sets taking turns), its ratio to none, and each
"_sources" / "_chunk16" variant's ratio to the set it refines.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/augment_cost.py")

import functools
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench  # noqa: E402
from resnet_jax import models, parallel  # noqa: E402
from resnet_jax.augment import batch as batch_augment  # noqa: E402
from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.training import optim, steps  # noqa: E402
from resnet_jax.training.state import create_train_state  # noqa: E402

SETS = {
    "none": {},
    "tv2": {"auto_augment": "trivial", "random_erasing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
            "label_smoothing": 0.1},
    "rsb_a1": {"auto_augment": "rand", "randaugment_magnitude": 7.0, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
               "loss": "bce"},
    # mixup / cutmix alone: one draw for the batch, or one per chunk of 16 images (the sources' per-GPU draws)
    "mix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "mix_chunk16": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mixup_chunk": 16},
    # batch-norm statistics per group of 16 images (ghost batch norm, the sources' per-GPU statistics)
    "bn_group16": {"model_kwargs": {"bn_group_size": 16}},
    # the recipes' sets as their sources draw them (docs/recipes.md): per-chunk draws, torchvision's pairing and
    # bilinear TrivialAugmentWide; timm's clipped LAMB and thresholded BCE
    "tv2_sources": {"auto_augment": "trivial", "auto_augment_interpolation": "bilinear", "random_erasing": 0.1,
                    "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "mixup_chunk": 16,
                    "mixup_style": "torchvision"},
    "rsb_a1_sources": {"auto_augment": "rand", "randaugment_magnitude": 7.0, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
                       "loss": "bce", "bce_target_threshold": 0.2, "mixup_chunk": 16, "optimizer": "lamb",
                       "max_grad_norm": 1.0},
}  # fmt: skip


def build(model_name: str, batch: int, resolution: int, fields: dict):
    """A compiled step on one synthetic device batch; returns ``five_steps()`` -> seconds a step."""
    c = default_config()
    c.batch_size = batch
    for k, v in fields.items():
        if k != "model_kwargs":
            c[k] = v
    mesh = parallel.make_mesh()
    num_classes = 10 if models.family(model_name) == "cifar" else 1000
    model = models.create(model_name, num_classes=num_classes, **fields.get("model_kwargs", {}))
    tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 100, 1000))
    holder = {"state": create_train_state(model, tx, resolution, [0], mesh)}  # one network
    rng = np.random.default_rng(0)
    data = parallel.shard_batch({"image": rng.integers(0, 256, (batch, resolution, resolution, 3), np.uint8),
                                 "label": rng.integers(0, num_classes, batch).astype(np.int32)}, mesh)  # fmt: skip
    options = steps.StepOptions(
        mean=tuple(c.data.mean), std=tuple(c.data.std), dtype=jnp.float32, label_smoothing=c.label_smoothing,
        ema_decay=0.0, max_loss=math.inf, make_tx=lambda hp: tx, loss=c.loss,
        transform=batch_augment.batch_transform(c, num_classes), bce_target_threshold=c.bce_target_threshold,
    )  # fmt: skip
    step = jax.jit(functools.partial(steps.train_step, hp={}, options=options), donate_argnums=0)

    def five_steps() -> float:
        t0 = time.perf_counter()
        for _ in range(5):
            holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / 5

    for _ in range(2):
        five_steps()
    return five_steps


# Each variant's ratio to the set it refines, measured in the same rounds.
REFINES = {"bn_group16": "none", "mix_chunk16": "mix", "tv2_sources": "tv2", "rsb_a1_sources": "rsb_a1"}


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--resolution", type=bench.positive, default=32)
    p.add_argument("--repeats", type=bench.positive, default=5)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = p.parse_args(argv)
    runs = {name: build(args.model, args.batch, args.resolution, SETS[name]) for name in args.sets}
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # round-robin: every set sees the same load
        for name, run in runs.items():
            times[name].append(run())
    out = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    result = {"model": args.model, "batch": args.batch, "resolution": args.resolution,
              **{f"{k}_ms": v for k, v in out.items()}, "device": device, "jax": jax.__version__}  # fmt: skip
    if "none" in out:
        result.update({f"{k}_ratio": v / out["none"] for k, v in out.items() if k != "none"})
    result.update({f"{k}_vs_{base}": out[k] / out[base] for k, base in REFINES.items() if k in out and base in out})
    print(json.dumps(result))


if __name__ == "__main__":
    bench.run(main)
