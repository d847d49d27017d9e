"""How many 15-minute GPU leases the paper's CIFAR-10 study needs (bench/gpu_suite.py's study part), from
the one H100 figure there is for its recipe, and which networks each lease trains:

    python bench/lease_plan.py                    # K = 1, and K = 2 at the plan's floor and at no cost
    python bench/lease_plan.py --seeds 2 --gain 1.6 --setup-s 20

The figure (docs/gpu.md, "Training runs on the on-device pipeline"): ``cifar_resnet20`` with the paper's
recipe on one H100 ran 62,514 steps in 292 s from process start to exit, 261 s of them in the training loop
(evaluation and a checkpoint every epoch: more than the study's 20 evaluations). Assumptions, not
measurements: a network's loop time grows with its depth (ResNet-20 at batch 128 is bound by kernel launches,
docs/gpu.md, and both its kernels and its FLOPs grow linearly with depth; a plain network has the same
convolutions); each process start (data, compilation) costs the same 31 s at every depth and again in every
lease that resumes a network; K seeds vmapped cost K / gain of one seed's time, where `gain` is the aggregate
images/s of K seeds over one seed's (packing/vmap_K over packing/vmap_1 of the suite; unmeasured on a GPU
yet). The PyTorch referee beside the study is not counted (its slowdown of the study is unmeasured).
"""

from __future__ import annotations

import argparse

STUDY_ORDER = ("cifar_resnet20", "cifar_plain20", "cifar_resnet56", "cifar_plain56", "cifar_resnet110",
               "cifar_resnet32", "cifar_plain32", "cifar_resnet44", "cifar_plain44")  # fmt: skip
H100_STEPS, H100_WALL_S, H100_LOOP_S = 62_514, 292.0, 261.0  # docs/gpu.md
STEPS = 64_000  # the paper's recipe


def depth(model: str) -> int:
    return int(model.rsplit("plain" if "plain" in model else "resnet", 1)[1])


def plan(seeds: int = 1, gain: float = 1.0, setup_s: float = 10.0, deadline_s: float = 555.0,
         reserve_s: float = 45.0) -> list[list[tuple[str, int, int]]]:  # fmt: skip
    """Per lease: (network, first step, last step) of what it trains."""
    start_s = H100_WALL_S - H100_LOOP_S
    step_s = {m: H100_LOOP_S / H100_STEPS * depth(m) / 20 * seeds / gain for m in STUDY_ORDER}
    budget = deadline_s - reserve_s - setup_s
    todo = [[m, 0] for m in STUDY_ORDER]
    leases = []
    while todo:
        left, lease = budget, []
        while todo and left > start_s:
            model, done = todo[0]
            left -= start_s
            steps = min(STEPS - done, int(left / step_s[model]))
            if steps <= 0:
                break
            lease.append((model, done, done + steps))
            left -= steps * step_s[model]
            todo[0][1] += steps
            if todo[0][1] == STEPS:
                todo.pop(0)
        leases.append(lease)
    return leases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=0, help="K (default: 1, and 2 at gains 1.3 and 2)")
    p.add_argument("--gain", type=float, default=1.0, help="aggregate images/s of K seeds over one seed's")
    p.add_argument("--setup-s", type=float, default=10.0, help="seconds before the suite's first item")
    args = p.parse_args()
    cases = [(args.seeds, args.gain)] if args.seeds else [(1, 1.0), (2, 2.0), (2, 1.3)]
    for seeds, gain in cases:
        leases = plan(seeds, gain, args.setup_s)
        total = sum(H100_LOOP_S / H100_STEPS * depth(m) / 20 * seeds / gain * STEPS for m in STUDY_ORDER)
        print(f"K = {seeds}, gain {gain:g}: {len(leases)} leases of study ({total / 60:,.0f} min in the loop)")
        for i, lease in enumerate(leases, 1):
            print(f"  {i:2d}: " + "; ".join(f"{m.removeprefix('cifar_')} {a:,}-{b:,}" for m, a, b in lease))


if __name__ == "__main__":
    main()
