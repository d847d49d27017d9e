"""Training curves as PNG: loss, top-1 and learning rate against steps.

Every training run writes ``<workdir>/curves.png`` at each evaluation. Several
runs on the same axes:

    python -m resnet_jax.plot runs/r20 runs/r56 --out r20_vs_r56.png

matplotlib draws without a display (no pyplot, no backend to choose).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from resnet_jax.errors import (
    ArgumentParser,
    NotFoundError,
    cannot_write_output,
    exit_on_user_error,
    stops_held,
    stops_raise,
)

Records = dict[str, list[dict[str, Any]]]


def read_metrics(workdir: str) -> Records:
    """``metrics.jsonl`` of a run as ``{split: [record, ...]}``, sorted by step.

    A step written twice (a run resumed from a checkpoint older than its last
    record) keeps its latest record.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise NotFoundError(f"{workdir!r} holds no metrics.jsonl: is it a training workdir?")
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                latest[(record["split"], record["step"])] = record
    out: Records = {}
    for (split, _), record in sorted(latest.items(), key=lambda kv: kv[0][1]):
        out.setdefault(split, []).append(record)
    return out


def _series(records: Records, split: str, key: str, transform: Any = float) -> tuple[list[int], list[float]]:
    rows = [r for r in records.get(split, []) if key in r]
    return [r["step"] for r in rows], [transform(r[key]) for r in rows]


def draw_curves(runs: dict[str, Records]) -> Any:
    """A matplotlib Figure of loss, top-1 accuracy and learning rate against
    steps for each named run (solid: test, dashed: training)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_loss, ax_top1, ax_lr = fig.subplots(1, 3)
    colors = [f"C{i}" for i in range(10)]
    for i, (name, records) in enumerate(runs.items()):
        c = colors[i % len(colors)]
        ax_loss.plot(*_series(records, "train", "loss"), "--", color=c, label=f"{name} train")
        ax_loss.plot(*_series(records, "eval", "loss"), "-", color=c, label=f"{name} test")
        ax_top1.plot(*_series(records, "train", "accuracy"), "--", color=c, label=f"{name} train")
        ax_top1.plot(*_series(records, "eval", "top1"), "-", color=c, label=f"{name} test")
        ax_lr.plot(*_series(records, "train", "lr"), "-", color=c, label=name)
    for ax, title in ((ax_loss, "loss"), (ax_top1, "top-1 accuracy"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax_loss.set_yscale("log")
    return fig


def plot_runs(workdirs: Sequence[str], out: str) -> str:
    """Draws the runs of `workdirs` on the same axes into the PNG `out`; returns `out`."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(w) for w in workdirs]
    fig = draw_curves({n: read_metrics(w) for n, w in zip(names, workdirs)})
    root, ext = os.path.splitext(out)
    temporary = f"{root}.tmp{ext}"  # whole or not at all: a reader (or a stop) never meets half a PNG
    try:
        fig.savefig(temporary, dpi=110)
        with stops_held():
            os.replace(temporary, out)
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)
    return out


def write_curves(workdir: str) -> None:
    """Writes ``<workdir>/curves.png`` (the loop calls this at each evaluation).
    Without matplotlib it says so and does nothing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib).")
        return
    plot_runs([workdir], os.path.join(workdir, "curves.png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m resnet_jax.plot", description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="training workdirs (holding metrics.jsonl)")
    parser.add_argument("--out", help="the PNG to write (default: <workdir>/curves.png for one run, else curves.png)")
    args = parser.parse_args(argv)
    out = args.out or (os.path.join(args.workdirs[0], "curves.png") if len(args.workdirs) == 1 else "curves.png")
    kept = f"{out} is as it was" if os.path.exists(out) else "nothing was written"
    with exit_on_user_error(), stops_raise("plot", kept):
        try:
            print(plot_runs(args.workdirs, out))
        except OSError as e:
            raise cannot_write_output(out, e, kept) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
