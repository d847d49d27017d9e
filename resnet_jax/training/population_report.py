"""The report of a population (`resnet_jax.training.population`): written into
the run's workdir at its end, or again with
``python -m resnet_jax.training.population_report <workdir>``.

* ``table.md``: each member (its folder, seed and swept values) with its final
  and best test top-1, then each point of the sweep with the mean ± standard
  deviation of both over its seeds.
* ``sweep.png``: final test top-1 against each swept value (every member a
  dot, the mean over the other fields and seeds a line).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from resnet_jax.errors import exit_on_user_error
from resnet_jax.plot import read_metrics
from resnet_jax.training.population import Population


def member_results(workdir: str, population: Population) -> list[dict[str, Any]]:
    """Each member's seed, values, folder and final and best test top-1 (from its ``metrics.jsonl``)."""
    rows = []
    for k, name in enumerate(population.names()):
        evals = read_metrics(os.path.join(workdir, name)).get("eval", [])
        top1 = [r["top1"] for r in evals]
        rows.append({
            "member": name, **population.values(k),
            "final_top1": top1[-1] if top1 else None, "best_top1": max(top1) if top1 else None,
            "step": evals[-1]["step"] if evals else 0,
        })  # fmt: skip
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(rows: list[dict[str, Any]], population: Population) -> str:
    """``table.md``'s Markdown: members, then the sweep's points over their seeds (top-1 in %)."""
    fields = list(population.swept)
    lines = ["| member | " + " | ".join([*fields, "seed"]) + " | final top-1 | best top-1 | step |",
             "|---" * (len(fields) + 5) + "|"]  # fmt: skip
    for r in rows:
        final, best = (f"{100 * r[k]:.2f}" if r[k] is not None else "-" for k in ("final_top1", "best_top1"))
        values = "".join(f"{r[f]:g} | " for f in fields)
        lines.append(f"| {r['member']} | {values}{r['seed']} | {final} | {best} | {r['step']} |")
    points: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["final_top1"] is not None:
            points.setdefault(tuple(r[f] for f in fields), []).append(r)
    lines += ["", f"Over the {population.num_seeds} seed(s) of each point (mean ± std, top-1 %):", ""]
    lines += ["| " + " | ".join([*fields, "seeds", "final top-1", "best top-1"]) + " |",
              "|---" * (len(fields) + 3) + "|"]  # fmt: skip
    for point, members in points.items():
        finals, bests = [m["final_top1"] for m in members], [m["best_top1"] for m in members]
        values = "".join(f"{v:g} | " for v in point)
        lines.append(f"| {values}{len(members)} | {_mean_std(finals)} | {_mean_std(bests)} |")
    return "\n".join(lines) + "\n"


def draw(rows: list[dict[str, Any]], population: Population) -> Any:
    """A matplotlib Figure: final test top-1 against each swept value (or the seed, when only seeds vary)."""
    from matplotlib.figure import Figure

    fields = list(population.swept) or ["seed"]
    fig = Figure(figsize=(4.5 * len(fields), 3.6), layout="constrained")
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    done = [r for r in rows if r["final_top1"] is not None]
    for ax, field in zip(axes, fields):
        xs = sorted({r[field] for r in done})
        ax.plot([r[field] for r in done], [100 * r["final_top1"] for r in done], "o", alpha=0.5, label="members")
        means = [statistics.mean(100 * r["final_top1"] for r in done if r[field] == x) for x in xs]
        ax.plot(xs, means, "-", color="C1", label="mean")
        if field != "seed" and len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(field)
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def write_report(workdir: str, population: Population) -> list[str]:
    """Writes ``table.md`` and ``sweep.png`` into `workdir`; returns their paths."""
    rows = member_results(workdir, population)
    out = os.path.join(workdir, "table.md")
    with open(out, "w") as f:
        f.write(table(rows, population))
    png = os.path.join(workdir, "sweep.png")
    draw(rows, population).savefig(png, dpi=110)
    return [out, png]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resnet_jax.training.population_report <workdir>``: the report of a population."""
    import argparse

    from resnet_jax.restore import read_metadata

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        info = read_metadata(args.workdir)
        members = info["members"]
        swept = {f: tuple(m[f] for m in members) for f in members[0] if f != "seed"}
        population = Population(tuple(m["seed"] for m in members), swept, info["num_seeds"])
        for path in write_report(args.workdir, population):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
