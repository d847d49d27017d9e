"""A study's results: ``results.json`` and ``table.md`` in the paper's Table 6 layout."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from resnet_jax.reproduce.study import Run, read_result

# He et al. 2015, Table 6 (CIFAR-10 test error, %, original arrays): parameters
# as printed, and the error; ResNet-110 is the best of 5 runs, mean +- std beside it.
PAPER_TABLE6 = {
    "cifar_resnet20": ("0.27M", "8.75"),
    "cifar_resnet32": ("0.46M", "7.51"),
    "cifar_resnet44": ("0.66M", "7.17"),
    "cifar_resnet56": ("0.85M", "6.97"),
    "cifar_resnet110": ("1.7M", "6.43 (6.61±0.16)"),
    "cifar_resnet1202": ("19.4M", "7.93"),
}


def depth(model: str) -> int:
    """The number of layers in a registry name (``cifar_plain56`` -> 56)."""
    found = re.search(r"(\d+)$", model)
    return int(found.group(1)) if found else 0


def collect(runs: Sequence[Run], state: dict[str, Any], data_label: str) -> dict[str, Any]:
    """The content of ``results.json``: the study, its scale and sittings, and
    the result of every finished run (unfinished ones are listed as pending)."""
    finished, pending = [], []
    for run in runs:
        result = read_result(run)
        if result is None:
            pending.append(run.name)
            continue
        for k, seed in enumerate(result["seeds"]):
            finished.append({**seed, "seed_index": k, "scale": state["scale"]})
    total = runs[0].total_steps if runs else 0
    return {
        "study": state["study"],
        "scale": state["scale"],
        "steps_per_run": total,
        "batch_size": int(runs[0].config.batch_size) if runs else 0,
        "data": data_label,
        "sittings": state["sittings"],
        "runs": finished,
        "pending": pending,
    }


def _params(n: int) -> str:
    """A parameter count as the paper writes it (0.27M), in thousands below 0.1M."""
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _errors(values: list[float]) -> str:
    """One error, or mean ± std (best) over seeds."""
    if len(values) == 1:
        return _pct(values[0])
    return f"{_pct(statistics.mean(values))} ± {_pct(statistics.stdev(values))} (best {_pct(min(values))})"


def _seconds(rs: list[dict[str, Any]]) -> float:
    """Wall time of a network's seeds: seeds trained together share theirs."""
    return sum(r["wall_seconds"] / r.get("seeds_together", 1) for r in rs)


def table_markdown(results: dict[str, Any]) -> str:
    """Table 6's layout: our test error beside the paper's, per network."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        by_model.setdefault(r["model"], []).append(r)
    seeds = max((len(v) for v in by_model.values()), default=1)
    scale, steps = results["scale"], results["steps_per_run"]
    lines = [
        f"# CIFAR-10 study (He et al. 2015, Table 6 and Figure 6): {results['data']}",
        "",
        f"Scale {scale:g}: {steps:,} iterations of batch {results['batch_size']} per network (the paper: 64,000), "
        f"learning rate divided by 10 at {scale:g} x 32k and 48k. Test error at the last iteration"
        + (f", mean ± std over {seeds} seeds (best), the seeds of a network trained together in one step"
           if seeds > 1 else "")
        + "; the paper's column is on the original CIFAR-10 arrays at scale 1.",
        "",
        "| method | layers | params | test error (%) | best test error during training (%) | training error (%) "
        "| paper: params | paper: test error (%) | seconds (all seeds) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = sorted(by_model, key=lambda m: ("resnet" in m, depth(m)))
    for model in order:
        rs = by_model[model]
        paper_params, paper_error = PAPER_TABLE6.get(model, ("", "(Fig. 6 only)" if "plain" in model else ""))
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:,.0f} |".format(
                "plain" if "plain" in model else "ResNet",
                rs[0].get("layers", depth(model)),  # results from before "layers": the name's
                _params(rs[0]["params"]),
                _errors([r["final_test_error"] for r in rs]),
                _errors([r["best_test_error"] for r in rs]),
                _errors([r["final_train_error"] for r in rs]),
                paper_params,
                paper_error,
                _seconds(rs),
            )
        )
    if results["pending"]:
        lines += ["", f"Not finished yet (the same command resumes them): {', '.join(results['pending'])}."]
    sittings = results["sittings"]
    if sittings:
        total = sum(s["seconds"] for s in sittings)
        lines += ["", f"Wall time of the study: {total:,.0f} s in {len(sittings)} sitting(s)."]
    return "\n".join(lines) + "\n"
