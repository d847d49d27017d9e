"""Reproduce the paper's CIFAR-10 study (He et al. 2015, Section 4.2) with one command.

    python -m resnet_jax.reproduce --study=cifar10 --workdir=runs/paper \\
        --config.data.path=../shared/data/cifar10-jpeg [--scale=0.02] [--only=cifar_plain20,cifar_resnet20]

Trains plain-20/32/44/56 and ResNet-20/32/44/56/110 with the paper's recipe
(`resnet_jax.config.cifar10_paper_config`), each an ordinary training run in
``<workdir>/<model>/``, and writes into the workdir ``results.json``,
``table.md`` (Table 6), ``figure.png`` (Figure 6) and ``figure7.png``
(Figure 7). Running the same command again skips finished runs and resumes
unfinished ones; SIGTERM saves and stops (exit status 3), after a report of the
runs finished so far; Ctrl-C saves and stops at once (status 130). Every
``--config.*`` override applies to every run.
"""

from __future__ import annotations

from resnet_jax.errors import stop_while_starting

stop_while_starting("reproduce")  # before the imports that take seconds: a stop while it starts is one line

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.errors import EXIT_PREEMPTED, ConfigError, exit_on_user_error, run_app  # noqa: E402
from resnet_jax.reproduce import figures, report, runner, study  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("study", "cifar10", list(study.STUDIES), "Which study of the paper.")
flags.DEFINE_string("workdir", None, "The study's folder: one sub-folder per run, and the report.")
flags.DEFINE_list("only", [], "Train only these networks (registry names), e.g. cifar_plain20,cifar_resnet1202.")
flags.DEFINE_float("scale", 1.0, "Multiplies every iteration count of the recipe (steps, lr boundaries, warm-up).")
flags.DEFINE_integer("parallel", 1, "Networks trained at once, each in its own process.")
flags.DEFINE_integer("seeds", 1, "Seeds per network (seed, seed+1, ...), trained together in one compiled step; "
                     "the table shows mean ± std and best.")
flags.DEFINE_integer("evals", 20, "Evaluations per run, evenly spaced (the points of Figure 6's test curves).")
flags.DEFINE_string("data_label", "", 'The data set\'s name in the report (default: from the data config, e.g. '
                    '"CIFAR-10 (JPEG copy)" for a folder named cifar10-jpeg).')  # fmt: skip
flags.mark_flag_as_required("workdir")


def data_label(config) -> str:
    """A name for the data of `config` in tables and figures."""
    if config.data.path:
        base = os.path.basename(os.path.normpath(config.data.path))
        return "CIFAR-10 (JPEG copy)" if base == "cifar10-jpeg" else f"image folder {base!r}"
    return f"TFDS {config.data.name}"


def write_report(runs: list[study.Run], state: dict, label: str, workdir: str) -> tuple[dict, list[str]]:
    """``results.json``, ``table.md``, ``figure.png`` and (once a run has finished)
    ``figure7.png`` from the runs so far; returns the results and the names of the files written."""
    results = report.collect(runs, state, label)
    study.write_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(report.table_markdown(results))
    title = f"{label}, scale {results['scale']:g} ({results['steps_per_run']:,} iterations)"
    figures.figure6(runs, f"Figure 6: {title}", os.path.join(workdir, "figure.png"))
    written = ["results.json", "table.md", "figure.png"]
    if results["runs"]:
        figures.figure7(results, f"Figure 7: layer responses, {title}", os.path.join(workdir, "figure7.png"))
        written.append("figure7.png")
    return results, written


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a Ctrl-C is the runs' (training/stops.py)
    logging.set_verbosity(logging.WARNING)
    with exit_on_user_error():
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments {argv[1:]}: every option is a --flag")
        return _study(FLAGS.workdir)


def _study(workdir: str) -> int:
    overrides = config_flags.get_override_values(FLAGS["config"])
    runs = study.plan(FLAGS.study, workdir, FLAGS.only, FLAGS.seeds, FLAGS.scale, FLAGS.evals, overrides)
    state = study.check_study_state(workdir, FLAGS.study, FLAGS.scale)
    study.check_schedules(runs)
    label = FLAGS.data_label or data_label(runs[0].config)
    todo = [r for r in runs if study.read_result(r) is None]
    print(f"{FLAGS.study} study at scale {FLAGS.scale:g}: {len(runs)} run(s), {len(todo)} to train, on {label}.")
    if todo:
        t0 = time.time()
        if FLAGS.parallel > 1:
            done = runner.run_in_parallel(runs, label, FLAGS.parallel)
        else:
            done = runner.run_sequentially(runs, label)
        state["sittings"].append({"started": t0, "seconds": time.time() - t0, "parallel": FLAGS.parallel})
        study.write_json(os.path.join(workdir, study.STATE_FILE), state)
    else:
        done = True
    for signum in (signal.SIGINT, signal.SIGTERM):  # the runs are over: the report is written whole
        signal.signal(signum, signal.SIG_IGN)
    results, written = write_report(runs, state, label, workdir)
    print(report.table_markdown(results))
    wrote = f"wrote {', '.join(written)} in {workdir}"
    if done:
        print(f"Done: {wrote}.")
        return 0
    pending = ", ".join(results["pending"]) or "none"
    print(f"SIGTERM: the study stopped before its end (runs to finish: {pending}); {wrote} from the runs finished "
          "so far; the same command resumes", file=sys.stderr)  # fmt: skip
    return EXIT_PREEMPTED


def define_config_flag() -> None:
    """``--config.*``: overrides for every run (ml_collections applies them when the flag is defined)."""
    config_flags.DEFINE_config_dict("config", default_config(), "Overrides for every run, e.g. --config.data.path=...")


if __name__ == "__main__":
    run_app(main, define_config_flag)
