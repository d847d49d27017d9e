"""The paper's Figures 6 and 7, drawn from a study's runs.

* Figure 6: training error (dashed) and test error (bold) against iterations,
  plain networks on the left, ResNets on the right, one colour per depth.
* Figure 7: the standard deviation of each 3x3 layer's response
  (`resnet_jax.models.responses`), layers in their original order (top) and
  sorted by magnitude (bottom), plain networks dashed, ResNets solid.

With several seeds, each network is drawn from its first seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnet_jax.plot import read_metrics
from resnet_jax.reproduce.report import depth
from resnet_jax.reproduce.study import Run


def _depth_colors(models: Sequence[str]) -> dict[int, str]:
    depths = sorted({depth(m) for m in models})
    return {d: f"C{i % 10}" for i, d in enumerate(depths)}


def figure6(runs: Sequence[Run], title: str, out: str) -> str:
    """Draws Figure 6 for the runs (first seed of each network) into `out`."""
    from matplotlib.figure import Figure

    firsts = [r for r in runs if r.seed_index == 0]
    colors = _depth_colors([r.model for r in firsts])
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = dict(zip(("plain", "resnet"), fig.subplots(1, 2, sharey=True)))
    top = 0.0
    for run in sorted(firsts, key=lambda r: depth(r.model)):
        try:
            records = read_metrics(run.workdir)
        except FileNotFoundError:
            continue  # not started yet
        ax = axes["plain" if "plain" in run.model else "resnet"]
        color = colors[depth(run.model)]
        train = [(r["step"], 100 * (1 - r["accuracy"])) for r in records.get("train", [])]
        test = [(r["step"], 100 * (1 - r["top1"])) for r in records.get("eval", [])]
        label = f"{'plain' if 'plain' in run.model else 'ResNet'}-{depth(run.model)}"
        if train:
            ax.plot(*zip(*train), "--", color=color, linewidth=1)
        if test:
            ax.plot(*zip(*test), "-", color=color, linewidth=2.2, label=label)
        top = max([top] + [e for _, e in train[len(train) // 5 :] + test[len(test) // 5 :]])
    for name, ax in axes.items():
        ax.set_title("plain networks" if name == "plain" else "ResNets")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes["plain"].set_ylabel("error (%)  [dashed: training, bold: test]")
    axes["plain"].set_ylim(0, min(100, top * 1.1) or 100)
    fig.suptitle(title)
    fig.savefig(out, dpi=110)
    return out


def figure7(results: dict[str, Any], title: str, out: str) -> str:
    """Draws Figure 7 from ``results.json``'s layer-response statistics into `out`."""
    from matplotlib.figure import Figure

    firsts = [r for r in results["runs"] if r["seed_index"] == 0]
    colors = _depth_colors([r["model"] for r in firsts])
    fig = Figure(figsize=(10, 7), layout="constrained")
    ax_orig, ax_sorted = fig.subplots(2, 1)
    for r in sorted(firsts, key=lambda r: ("resnet" in r["model"], depth(r["model"]))):
        stds = list(r["layer_response_std"].values())
        plain = "plain" in r["model"]
        style = dict(color=colors[depth(r["model"])], linestyle="--" if plain else "-", linewidth=1.4)
        label = f"{'plain' if plain else 'ResNet'}-{depth(r['model'])}"
        xs = range(1, len(stds) + 1)
        ax_orig.plot(xs, stds, label=label, **style)
        ax_sorted.plot(xs, sorted(stds, reverse=True), label=label, **style)
    ax_orig.set_xlabel("layer index (original)")
    ax_sorted.set_xlabel("layer index (sorted by magnitude)")
    for ax in (ax_orig, ax_sorted):
        ax.set_ylabel("std of the response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    fig.suptitle(title)
    fig.savefig(out, dpi=110)
    return out
