"""The paper's Figures 6 and 7, drawn from a study's runs.

* Figure 6: training error (dashed) and test error (bold) against iterations,
  plain networks on the left, ResNets on the right, one colour per depth.
* Figure 7: the standard deviation of each 3x3 layer's response
  (`resnet_jax.models.responses`), layers in their original order (top) and
  sorted by magnitude (bottom), plain networks dashed, ResNets solid.

With several seeds, Figure 6 draws each network's mean over its seeds with a
band from the lowest to the highest seed; Figure 7 draws its first seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from resnet_jax.plot import read_metrics
from resnet_jax.reproduce.report import depth
from resnet_jax.reproduce.study import Run
from resnet_jax.training import population


def _depth_colors(models: Sequence[str]) -> dict[int, str]:
    depths = sorted({depth(m) for m in models})
    return {d: f"C{i % 10}" for i, d in enumerate(depths)}


def _over_seeds(curves: list[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Steps every seed has, and the mean, lowest and highest value over the seeds at each."""
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.asarray([[c[s] for s in steps] for c in curves])
    return steps, values.mean(0), values.min(0), values.max(0)


def _error_curves(run: Run, split: str, key: str) -> list[dict[int, float]]:
    """``{step: error %}`` of each seed of `run` (skipping seeds not started yet)."""
    curves = []
    for seed_dir in population.member_dirs(run.workdir, population.from_config(run.config)):
        try:
            records = read_metrics(seed_dir).get(split, [])
        except FileNotFoundError:
            continue
        curves.append({r["step"]: 100 * (1 - r[key]) for r in records})
    return [c for c in curves if c]


def figure6(runs: Sequence[Run], title: str, out: str) -> str:
    """Draws Figure 6 for the runs (each network's mean over its seeds, with a band) into `out`."""
    from matplotlib.figure import Figure

    colors = _depth_colors([r.model for r in runs])
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = dict(zip(("plain", "resnet"), fig.subplots(1, 2, sharey=True)))
    top = 0.0
    for run in sorted(runs, key=lambda r: depth(r.model)):
        ax = axes["plain" if "plain" in run.model else "resnet"]
        color = colors[depth(run.model)]
        label = f"{'plain' if 'plain' in run.model else 'ResNet'}-{depth(run.model)}"
        for split, key, style, width in (("train", "accuracy", "--", 1.0), ("eval", "top1", "-", 2.2)):
            curves = _error_curves(run, split, key)
            if not curves:
                continue
            steps, mean, low, high = _over_seeds(curves)
            ax.plot(steps, mean, style, color=color, linewidth=width, label=label if split == "eval" else None)
            if len(curves) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
            top = max(top, float(np.max(high[len(high) // 5 :], initial=0.0)))
    for name, ax in axes.items():
        ax.set_title("plain networks" if name == "plain" else "ResNets")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a side with no curve yet (no run of its kind): no legend, no warning
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
