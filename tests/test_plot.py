"""Training curves: metrics.jsonl read back, and one or several runs drawn as PNG."""

import json

import pytest

from resnet_jax import plot


def write_run(workdir, records):
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def records(loss_scale=1.0):
    out = []
    for step in (10, 20, 30):
        out.append({"step": step, "split": "train", "loss": loss_scale / step, "accuracy": 0.5, "lr": 0.1})
        out.append({"step": step, "split": "eval", "loss": 2 * loss_scale / step, "top1": 0.4, "top5": 0.9})
    return out


def test_read_metrics_keeps_the_latest_record_of_a_step(tmp_path):
    rs = records()
    # A run killed after writing step 30 and resumed from step 20 writes step 30 again.
    rs.append({"step": 30, "split": "train", "loss": 0.5, "accuracy": 0.75, "lr": 0.01})
    write_run(tmp_path / "run", rs)
    metrics = plot.read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in metrics["train"]] == [10, 20, 30]
    assert metrics["train"][-1]["accuracy"] == 0.75 and [r["top1"] for r in metrics["eval"]] == [0.4] * 3


def test_cli_draws_several_runs_into_one_png(tmp_path, capsys):
    write_run(tmp_path / "a", records())
    write_run(tmp_path / "b", records(2.0))
    out = tmp_path / "both.png"
    assert plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert plot.main([str(tmp_path / "a")]) == 0  # one run: <workdir>/curves.png
    assert (tmp_path / "a" / "curves.png").exists()
    fig = plot.draw_curves({"a": plot.read_metrics(str(tmp_path / "a"))})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "top-1 accuracy", "learning rate"]
    assert [list(line.get_xdata()) for line in fig.axes[2].lines] == [[10, 20, 30]]
    with pytest.raises(SystemExit) as stop:
        plot.main([str(tmp_path / "missing")])
    assert stop.value.code == 2 and "holds no metrics.jsonl" in capsys.readouterr().err
