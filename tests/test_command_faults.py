"""Every command keeps the trainer's promises: against each fault it ends in one
line on stderr with its documented status, and loses nothing.

`ROWS` is a table of (command, fault) rows, run by one runner (`run_row`) that
asserts for each:

* the status (docs/faults.md: 2 a user's error, 3 SIGTERM, 130 Ctrl-C);
* one line on stderr, matching the row's, and nothing else (no traceback, no
  library's warning); a row that ends well (status 0) prints nothing there,
  or the one warning its row names (an evaluation whose record cannot be written);
* nothing lost: the checksums of the workdir, of the earlier export and
  conversion and of the other files of the scene, before and after (but for
  what the row replaces on purpose), and no temporary file left beside them.

A row runs the command's ``main`` in this process (its faults injected with
monkeypatch: a signal sent to this process in the middle of a write, an OS
error raised by the writer), or, for a stop while the command starts, runs
``python -m resnet_jax.<command>`` (or ``python bench/<script>.py``) and signals
it once its handlers are in place. A kill (SIGKILL) is a row of the state it leaves on disk: the same
command run again over it.

To add a command: a `Scene` field for what it reads or writes (and to
`Scene.protected`), its ``main`` in `MAINS`, and its rows.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import functools
import gc
import hashlib
import importlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import env_with_devices, make_image_folder, tiny_config
from fixtures.make_checkpoints import HERE as FIXTURES

import bench
from resnet_jax import convert, evaluate, export, outputs, parallel, plot, predict
from resnet_jax.errors import exit_on_user_error
from resnet_jax.export import main as export_main
from resnet_jax.training.checkpoint import Checkpointer

MAINS: dict[str, Callable[[list[str]], Any]] = {"export": export_main, "convert": convert.main}
ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = FIXTURES / "one_seed"  # cifar_resnet20 of 4-8-16 filters at 16 px: the workdir an export reads


@dataclasses.dataclass
class Scene:
    """A folder of the files a command reads or could harm: a training run's workdir,
    an earlier export and conversion, a foreign folder and a plain file."""

    root: str
    weights: str  # torchvision resnet18 weights (.safetensors), read by convert

    def __post_init__(self) -> None:
        self.run = os.path.join(self.root, "run")
        self.export = os.path.join(self.root, "exports", "m.stablehlo")
        self.converted = os.path.join(self.root, "converted")
        self.foreign = os.path.join(self.root, "notes")
        self.file = os.path.join(self.root, "blocker")
        self.table = os.path.join(self.root, "models.md")  # a page whose marked block bench/model_table.py replaces

    @property
    def protected(self) -> list[str]:
        return [self.run, self.export, self.export + ".json", self.converted, self.foreign, self.file, self.table]


@dataclasses.dataclass(frozen=True)
class Row:
    """One fault met by one command."""

    command: str
    fault: str
    args: Callable[[Scene], list[str]]
    status: int
    line: str | None  # the regular expression the one stderr line matches; None: stderr is empty
    inject: Callable[[Scene, pytest.MonkeyPatch], None] | None = None  # before the command runs
    start_up: str | None = None  # a signal ("SIGTERM", "SIGINT") sent while ``python -m`` starts
    replaced: Callable[[Scene], list[str]] = lambda scene: []  # what the row replaces on purpose
    check: Callable[[Scene], None] | None = None  # what else holds afterwards

    def __str__(self) -> str:
        return f"{self.command}: {self.fault}"


@functools.cache
def _sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """A file's SHA-256, computed once a version (a file written again is another inode or time)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sha256(path: str) -> str:
    info = os.stat(path)
    return _sha256(path, info.st_ino, info.st_size, info.st_mtime_ns)


def digest(path: str) -> dict[str, str] | None:
    """Every file under `path` (or the file itself) -> its SHA-256; None if nothing is there."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return {"": sha256(path)}
    return {os.path.relpath(os.path.join(folder, name), path): sha256(os.path.join(folder, name))
            for folder, _, files in os.walk(path) for name in files}  # fmt: skip


def temporaries(root: str) -> list[str]:
    """The commands' temporary files and folders left anywhere under `root`."""
    pattern = re.compile(r"\..+\.(tmp|old)-\d+(\.json)?|.*\.orbax-checkpoint-tmp.*")
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if pattern.fullmatch(n))


def signal_in(module: Any, name: str, signum: int, before: bool = False) -> Callable[[Scene, Any], None]:
    """An injection: `module.name` (a function) sends `signum` to this process after
    (`before`: before) doing its work, so that the signal comes in the middle of the write."""

    def inject(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                os.kill(os.getpid(), signum)
            result = original(*args, **kwargs)
            if not before:
                os.kill(os.getpid(), signum)
            return result

        monkeypatch.setattr(module, name, wrapped)

    return inject


def os_error_in(module: Any, name: str, number: int, is_async: bool = False) -> Callable[[Scene, Any], None]:
    """An injection: `module.name` writes part of its output, then fails with the OS
    error `number` (as a read-only folder or a full disk makes it fail)."""

    def inject(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: Any, **kwargs: Any) -> None:
            path = next((a for a in args if isinstance(a, str)), None)
            if path is not None:  # the part written before the failure
                with open(path, "wb") as f:
                    f.write(b"part")
            raise OSError(number, os.strerror(number))

        async def fail_async(*args: Any, **kwargs: Any) -> None:
            fail()

        monkeypatch.setattr(module, name, fail_async if is_async else fail)

    return inject


def dead_pid() -> int:
    """The PID of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def killed_export(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an export killed in the middle of its write leaves: its temporary artifact and record."""
    pid, folder = dead_pid(), os.path.dirname(scene.export)
    for name in (f".m.stablehlo.tmp-{pid}", f".m.stablehlo.tmp-{pid}.json"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"")  # the 0-byte files a SIGKILL left


def killed_convert_between_renames(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a conversion killed between its two renames leaves: the earlier one moved
    aside with nothing in its place, the new one complete beside it."""
    pid = dead_pid()
    old, new = (os.path.join(scene.root, f".converted.{kind}-{pid}") for kind in ("old", "tmp"))
    os.replace(scene.converted, old)
    shutil.copytree(old, new, copy_function=os.link)


def killed_convert_while_writing(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a conversion killed while Orbax wrote leaves: a partial folder beside the earlier one."""
    partial = os.path.join(scene.root, f".converted.tmp-{dead_pid()}", "checkpoints", "0.orbax-checkpoint-tmp-1")
    os.makedirs(partial)
    with open(os.path.join(partial, "part"), "wb") as f:
        f.write(b"part")


def new_export_in_place(scene: Scene) -> None:
    """The rows' export (float32 input), not the earlier one (uint8), with its record."""
    with open(scene.export + ".json") as f:
        assert json.load(f)["input"]["dtype"] == "float32"


def new_conversion_in_place(scene: Scene) -> None:
    """The rows' conversion (IMAGENET1K_V1's tag), not the earlier one ("test earlier")."""
    from resnet_jax.restore import read_metadata

    assert read_metadata(scene.converted, 0)["source"] == "torchvision resnet18.IMAGENET1K_V1"


def export_args(out: Callable[[Scene], str], *extra: str) -> Callable[[Scene], list[str]]:
    return lambda scene: ["--workdir", scene.run, "--format", "stablehlo", "--out", out(scene), "--platforms", "cpu",
                          *extra]  # fmt: skip


def convert_args(out: Callable[[Scene], str], *extra: str, model: str = "resnet18") -> Callable[[Scene], list[str]]:
    return lambda scene: ["torchvision", model, scene.weights, out(scene), *extra]


EXPORT = export_args(lambda s: s.export, "--overwrite")
CONVERT = convert_args(lambda s: s.converted, "--overwrite")
STOPPED_EXPORT = r"{}: export stopped; /.*/exports/m\.stablehlo is as it was; the same command runs again"
STOPPED_CONVERT = r"{}: convert stopped; /.*/converted is as it was; the same command runs again"
_export_module = sys.modules[export_main.__module__]  # the package (`resnet_jax.export` is its function)


def _orbax_handler() -> Any:
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointHandler


ROWS = [
    # export
    Row("export", "SIGTERM while it starts", EXPORT, 3, "SIGTERM: export stopped while starting; nothing was written",
        start_up="SIGTERM"),
    Row("export", "Ctrl-C while it starts", EXPORT, 130, "Ctrl-C: export stopped while starting; nothing was written",
        start_up="SIGINT"),
    Row("export", "SIGTERM in the middle of the write", EXPORT, 3, STOPPED_EXPORT.format("SIGTERM"),
        inject=signal_in(_export_module, "_write_stablehlo", signal.SIGTERM)),
    Row("export", "Ctrl-C in the middle of the write", EXPORT, 130, STOPPED_EXPORT.format("Ctrl-C"),
        inject=signal_in(_export_module, "_write_stablehlo", signal.SIGINT)),
    Row("export", "SIGTERM during the renames", EXPORT, 3,
        r"SIGTERM: export stopped after writing /.*/m\.stablehlo and /.*/m\.stablehlo\.json \(complete\)",
        inject=signal_in(outputs, "swap", signal.SIGTERM, before=True),
        replaced=lambda s: [s.export, s.export + ".json"],
        check=new_export_in_place),
    Row("export", "a read-only folder", EXPORT, 2,
        r"error: cannot write /.*/m\.stablehlo \(Read-only file system\); make it writable or choose another path, "
        r"then run the same command again; /.*/m\.stablehlo is as it was",
        inject=os_error_in(_export_module, "_write_stablehlo", errno.EROFS)),
    Row("export", "a full disk", EXPORT, 2,
        r"error: cannot write /.*/m\.stablehlo \(No space left on device\); free space, then run the same command "
        r"again; /.*/m\.stablehlo is as it was",
        inject=os_error_in(_export_module, "_write_stablehlo", errno.ENOSPC)),
    Row("export", "a parent that is a file", export_args(lambda s: os.path.join(s.file, "m.onnx")), 2,
        r"error: cannot write /.*/blocker/m\.onnx \(/.*/blocker is a file, not a folder\); choose another path, "
        r"then run the same command again; nothing was written"),
    Row("export", "a workdir at --out", export_args(lambda s: s.run, "--overwrite"), 2,
        r"error: /.*/run is a training run's workdir \(it holds checkpoints/, config\.json, metrics\.jsonl\), not an "
        r"earlier export \(recognised by its record, /.*/run\.json\): export replaces only its own; choose another "
        r"--out"),
    Row("export", "a foreign folder at --out", export_args(lambda s: s.foreign, "--overwrite"), 2,
        r"error: /.*/notes is a folder holding todo\.txt, not an earlier export .*; choose another --out"),
    Row("export", "a foreign file at --out", export_args(lambda s: s.file, "--overwrite"), 2,
        r"error: /.*/blocker is a file, not an earlier export .*; choose another --out"),
    Row("export", "an earlier export, no --overwrite", export_args(lambda s: s.export), 2,
        r"error: /.*/m\.stablehlo holds an earlier export \(stablehlo of cifar_resnet20, written .*\); pass "
        r"overwrite=True \(--overwrite\) to replace it"),
    Row("export", "--platforms cpu,gpu", export_args(lambda s: s.export, "--overwrite", "--platforms", "cpu,gpu"), 2,
        r"error: unknown platform 'gpu' \(a GPU is cuda or rocm\); platforms: cpu, cuda, rocm, tpu, any of them on "
        r"any machine"),
    Row("export", "a bad --step", export_args(lambda s: s.export, "--overwrite", "--step", "last"), 2,
        r"error: step 'last' is not \"latest\", \"best\" or a step number"),
    Row("export", "a malformed --member", export_args(lambda s: s.export, "--member", "one"), 2,
        r"error: argument --member: invalid int value: 'one' \(python -m resnet_jax\.export --help\)"),
    Row("export", "the leftovers of a SIGKILL", EXPORT, 0, None, inject=killed_export,
        replaced=lambda s: [s.export, s.export + ".json"], check=new_export_in_place),
    # convert
    Row("convert", "SIGTERM while it starts", CONVERT, 3,
        "SIGTERM: convert stopped while starting; nothing was written", start_up="SIGTERM"),
    Row("convert", "Ctrl-C while it starts", CONVERT, 130,
        "Ctrl-C: convert stopped while starting; nothing was written", start_up="SIGINT"),
    Row("convert", "SIGTERM in the middle of the write", CONVERT, 3, STOPPED_CONVERT.format("SIGTERM"),
        inject=signal_in(Checkpointer, "wait", signal.SIGTERM)),
    Row("convert", "Ctrl-C in the middle of the write", CONVERT, 130, STOPPED_CONVERT.format("Ctrl-C"),
        inject=signal_in(Checkpointer, "wait", signal.SIGINT)),
    Row("convert", "SIGTERM during the renames", CONVERT, 3,
        r"SIGTERM: convert stopped after writing /.*/converted/checkpoints \(complete\)",
        inject=signal_in(outputs, "swap", signal.SIGTERM, before=True), replaced=lambda s: [s.converted],
        check=new_conversion_in_place),
    Row("convert", "a read-only folder", CONVERT, 2,
        r"error: cannot write /.*/converted \(Read-only file system\); make it writable or choose another path, "
        r"then run the same command again; the earlier conversion in /.*/converted is as it was",
        inject=lambda s, mp: os_error_in(_orbax_handler(), "async_save", errno.EROFS, is_async=True)(s, mp)),
    Row("convert", "a full disk", CONVERT, 2,
        r"error: cannot write /.*/converted \(No space left on device\); free space, then run the same command "
        r"again; the earlier conversion in /.*/converted is as it was",
        inject=lambda s, mp: os_error_in(_orbax_handler(), "async_save", errno.ENOSPC, is_async=True)(s, mp)),
    Row("convert", "a parent that is a file", convert_args(lambda s: os.path.join(s.file, "out")), 2,
        r"error: cannot write /.*/blocker/out \(/.*/blocker is a file, not a folder\); choose another path, then "
        r"run the same command again; nothing was written"),
    Row("convert", "a workdir at out_dir", convert_args(lambda s: s.run, "--overwrite"), 2,
        r"error: /.*/run is a training run's workdir \(it holds checkpoints/, config\.json, metrics\.jsonl\) and "
        r"holds no earlier conversion; convert writes only into a new or empty folder, or over an earlier "
        r"conversion: choose another"),
    Row("convert", "a foreign folder at out_dir", convert_args(lambda s: s.foreign, "--overwrite"), 2,
        r"error: /.*/notes is a folder holding todo\.txt and holds no earlier conversion; .*"),
    Row("convert", "an earlier conversion, no --overwrite", convert_args(lambda s: s.converted), 2,
        r"error: /.*/converted holds an earlier conversion \(test earlier\); pass --overwrite to replace it"),
    Row("convert", "weights of another depth", convert_args(lambda s: s.converted, "--overwrite", model="resnet50"),
        2, r"error: state dict does not fit resnet50 \(1000 classes\): 'fc\.weight': shape \(1000, 512\) does not "
        r"fit head/kernel \(2048, 1000\); \d+ more do not fit \(\d+ missing, \d+ of another shape\); its shapes "
        r"\(blocks per stage 2-2-2-2, basic blocks\) are those of torchvision's resnet18 or timm's resnet18: "
        r"python -m resnet_jax\.convert torchvision resnet18 \.\.\."),
    Row("convert", "a bad --crop-fraction", convert_args(lambda s: s.converted, "--overwrite", "--crop-fraction", "2"),
        2, r"error: crop fraction must be in \(0, 1\] and image size >= 1, got 2\.0, 224"),
    Row("convert", "a missing argument", lambda s: ["torchvision", "resnet18", s.weights], 2,
        r"error: the following arguments are required: out_dir \(python -m resnet_jax\.convert --help\)"),
    Row("convert", "a SIGKILL between its renames, no --overwrite", convert_args(lambda s: s.converted), 2,
        r"error: /.*/converted holds an earlier conversion \(test earlier\); pass --overwrite to replace it",
        inject=killed_convert_between_renames),  # the earlier conversion put back whole, the same command runs
    Row("convert", "a SIGKILL while it wrote", CONVERT, 0, None, inject=killed_convert_while_writing,
        replaced=lambda s: [s.converted], check=new_conversion_in_place),
]  # fmt: skip

# train.py --mode=eval, predict and reproduce: eval and predict only read the run (scene.run stays as it was in
# every row); reproduce's rows are its start (its stops while it trains: tests/test_reproduce.py).


def images_in(scene: Scene) -> str:
    """The fixture run's kind of image folder (3 classes of 16 px PNGs) in the scene, made on first use."""
    folder = os.path.join(scene.root, "images")
    if not os.path.isdir(folder):
        make_image_folder(pathlib.Path(folder))
    return folder


def eval_main(argv: list[str]) -> int:
    """``train.py --mode=eval --workdir W [--step S]`` in this process, as its ``main`` runs it (the config:
    the fixture's recipe on ``--data``, the scene's image folder)."""
    args = dict(zip(argv[::2], argv[1::2]))
    with exit_on_user_error():
        config = tiny_config(args["--data"], **{"data.pipeline": "device"})
        evaluate.evaluate_command(config, args["--workdir"], args.get("--step", "latest"))
    return 0


def refused_write(number: int, module: Any = evaluate) -> Callable[[Scene, Any], None]:
    """An injection: the evaluation record's write (`module`'s) fails with the OS error `number`:
    at once (read-only) or after part of it is written (a full disk)."""

    def inject(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
        def fake_open(path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if "w" not in mode or number == errno.EROFS:
                raise OSError(number, os.strerror(number), path)
            f = open(path, mode, *args, **kwargs)  # a full disk: a file made, part of it written, then ENOSPC
            f.write("{")

            def full(text: str) -> None:
                raise OSError(number, os.strerror(number), path)

            f.write = full
            return f

        monkeypatch.setattr(module, "open", fake_open, raising=False)

    return inject


def ctrl_c_swallowed(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """An injection: a Ctrl-C lands inside the restore, in a library that swallows the
    ``KeyboardInterrupt`` (as asyncio's runner inside Orbax's restore could)."""
    original = predict.restore

    def restore(*args: Any, **kwargs: Any) -> Any:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs here at the latest
        except (KeyboardInterrupt, Exception):  # what the handler raised (errors.stops_raise: `Interrupted`)
            pass
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "restore", restore)


MAINS.update({"train.py --mode=eval": eval_main, "predict": predict.main})
EVAL = lambda scene: ["--workdir", scene.run, "--data", images_in(scene)]  # noqa: E731
STOPPED_EVAL = r"{}: train\.py --mode=eval stopped; nothing was written"
NOT_SAVED = (r"warning: could not write /.*/run/eval_test_6\.json \({}\): the metrics are printed, not saved; {} "
             r"to keep them")  # fmt: skip


def predict_args(*extra: str, images: Callable[[Scene], list[str]] | None = None) -> Callable[[Scene], list[str]]:
    """predict's arguments: the scene's run, `extra`, and two good images (or `images`)."""
    good = lambda s: [os.path.join(images_in(s), "test", c, "0000.png") for c in ("circle", "square")]  # noqa: E731
    return lambda s: ["--workdir", s.run, *extra, *(images or good)(s)]


def unreadable(scene: Scene) -> list[str]:
    """Two good images, a file that is not one and a missing one."""
    broken = os.path.join(scene.root, "broken.png")
    with open(broken, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    good = os.path.join(images_in(scene), "test", "circle")
    return [os.path.join(good, "0000.png"), broken, os.path.join(good, "0001.png"), os.path.join(scene.root, "no.jpg")]


STUDY = lambda s: ["--workdir", os.path.join(s.root, "study"), "--only=cifar_resnet20", "--scale=0.001"]  # noqa: E731

ROWS += [
    # train.py --mode=eval (a stop while train.py starts: tests/test_stops.py)
    Row("train.py --mode=eval", "SIGTERM in the middle of the evaluation", EVAL, 3, STOPPED_EVAL.format("SIGTERM"),
        inject=signal_in(parallel, "shard_batch", signal.SIGTERM)),
    Row("train.py --mode=eval", "Ctrl-C in the middle of the evaluation", EVAL, 130, STOPPED_EVAL.format("Ctrl-C"),
        inject=signal_in(parallel, "shard_batch", signal.SIGINT)),
    Row("train.py --mode=eval", "a read-only workdir", EVAL, 0,
        NOT_SAVED.format("Read-only file system", "make it writable"), inject=refused_write(errno.EROFS)),
    Row("train.py --mode=eval", "a full disk", EVAL, 0, NOT_SAVED.format("No space left on device", "free space"),
        inject=refused_write(errno.ENOSPC)),
    Row("train.py --mode=eval", "a bad --step", lambda s: [*EVAL(s), "--step", "last"], 2,
        r"error: step 'last' is not \"latest\", \"best\" or a step number"),
    # predict
    Row("predict", "SIGTERM while it starts", predict_args(), 3,
        "SIGTERM: predict stopped while starting; nothing was written", start_up="SIGTERM"),
    Row("predict", "Ctrl-C while it starts", predict_args(), 130,
        "Ctrl-C: predict stopped while starting; nothing was written", start_up="SIGINT"),
    Row("predict", "SIGTERM in the middle of the restore", predict_args(), 3, "SIGTERM: predict stopped; nothing was "
        "written", inject=signal_in(predict, "restore", signal.SIGTERM)),
    Row("predict", "Ctrl-C in the middle of the restore", predict_args(), 130, "Ctrl-C: predict stopped; nothing was "
        "written", inject=signal_in(predict, "restore", signal.SIGINT)),
    Row("predict", "a Ctrl-C a library swallowed", predict_args(), 130, "Ctrl-C: predict stopped; nothing was written",
        inject=ctrl_c_swallowed),
    Row("predict", "files that cannot be read", predict_args(images=unreadable), 2,
        r"error: 2 of 4 files cannot be read, so nothing was predicted: /.*/broken\.png: not a readable image \(.*\); "
        r"/.*/no\.jpg: not a readable image \(\[Errno 2\] No such file or directory: .*\)"),
    Row("predict", "--top 0", predict_args("--top", "0"), 2,
        r"error: --top=0: print at least one class an image \(--top=1 or more\)"),
    Row("predict", "a bad --step", predict_args("--step", "last"), 2,
        r"error: step 'last' is not \"latest\", \"best\" or a step number"),
    # reproduce
    Row("reproduce", "SIGTERM while it starts", STUDY, 3,
        "SIGTERM: reproduce stopped while starting; nothing was written", start_up="SIGTERM"),
    Row("reproduce", "Ctrl-C while it starts", STUDY, 130,
        "Ctrl-C: reproduce stopped while starting; nothing was written", start_up="SIGINT"),
]  # fmt: skip


def no_curves(scene: Scene) -> None:
    """Neither the plot nor its temporary file was left."""
    assert not [n for n in os.listdir(scene.root) if n.startswith("curves")], os.listdir(scene.root)


MAINS["plot"] = plot.main
PLOT = lambda s: [s.run, "--out", os.path.join(s.root, "curves.png")]  # noqa: E731
NOT_PLOTTED = (r"error: cannot write /.*/curves\.png \({}\); {}, then run the same command again; nothing was "
               r"written")  # fmt: skip


def _figure() -> Any:
    from matplotlib.figure import Figure

    return Figure


ROWS += [
    Row("plot", "SIGTERM in the middle of the write", PLOT, 3, "SIGTERM: plot stopped; nothing was written",
        inject=lambda s, mp: signal_in(_figure(), "savefig", signal.SIGTERM)(s, mp), check=no_curves),
    Row("plot", "a read-only folder", PLOT, 2, NOT_PLOTTED.format("Read-only file system", "make it writable or "
        "choose another path"), inject=lambda s, mp: os_error_in(_figure(), "savefig", errno.EROFS)(s, mp),
        check=no_curves),
    Row("plot", "a full disk", PLOT, 2, NOT_PLOTTED.format("No space left on device", "free space"),
        inject=lambda s, mp: os_error_in(_figure(), "savefig", errno.ENOSPC)(s, mp), check=no_curves),
]  # fmt: skip


# bench scripts (bench/__init__.py): model_table imports JAX, torch_speed and torch_accuracy torch, gpu runs the rest.
# A stop while one starts is sent before its imports: each such row costs a Python start-up, not JAX's import.
TABLE_START, TABLE_END = "<!-- model-table:start -->", "<!-- model-table:end -->"
TABLE = lambda s: ["cifar_resnet20", "--write", s.table]  # noqa: E731
NOT_TABLED = (r"error: cannot write /.*/models\.md \({}\); {}, then run the same command again; /.*/models\.md is as "
              r"it was")  # fmt: skip
EARLIER_GPU = '{"item": "resnet20_jax", "status": "done", "result": {"train_images_per_s": 400.0}}\n'


def script(name: str) -> Any:
    """bench/<name>.py as a module (imported on first use: torch's import is seconds)."""
    return importlib.import_module(f"bench.{name}")


for name in ("model_table", "torch_speed", "torch_accuracy", "gpu"):  # each as ``python bench/<name>.py`` runs it
    MAINS[f"bench/{name}.py"] = lambda argv, name=name: bench.entry(script(name).main)(argv)


def table_in_place(scene: Scene) -> None:
    """The page's marked block is the new table; the rest of the page as it was."""
    with open(scene.table) as f:
        text = f.read()
    assert text.startswith(f"# Models\n{TABLE_START}\n| Model |") and "`cifar_resnet20`" in text, text
    assert "an earlier table" not in text and text.endswith(f"{TABLE_END}\n")


def gpu_full_disk(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier bench/gpu.py run in <root>/gpu (one item measured), one item left to measure, a full disk."""
    gpu, out = script("gpu"), os.path.join(scene.root, "gpu")
    os.makedirs(out)
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        f.write(EARLIER_GPU)
    item = gpu.Item("resnet50_jax", [sys.executable, "-c", "print('{\"train_images_per_s\": 9.0}')"], gpu.last_json)
    monkeypatch.setattr(gpu, "items", lambda sizes, data, out: [item])
    refused_write(errno.ENOSPC, bench)(scene, monkeypatch)


def gpu_results_kept(scene: Scene) -> None:
    with open(os.path.join(scene.root, "gpu", "results.jsonl")) as f:
        assert f.read() == EARLIER_GPU


ROWS += [
    Row("bench/model_table.py", "SIGTERM while it starts", TABLE, 3,
        "SIGTERM: bench/model_table.py stopped while starting; nothing was written", start_up="SIGTERM"),
    Row("bench/model_table.py", "Ctrl-C while it starts", TABLE, 130,
        "Ctrl-C: bench/model_table.py stopped while starting; nothing was written", start_up="SIGINT"),
    Row("bench/model_table.py", "SIGTERM in the middle of the count", TABLE, 3,
        "SIGTERM: bench/model_table.py stopped; nothing was written",
        inject=lambda s, mp: signal_in(script("model_table"), "rows", signal.SIGTERM)(s, mp)),
    Row("bench/model_table.py", "a read-only folder", TABLE, 2,
        NOT_TABLED.format("Read-only file system", "make it writable or choose another path"),
        inject=refused_write(errno.EROFS, bench)),
    Row("bench/model_table.py", "a full disk", TABLE, 2, NOT_TABLED.format("No space left on device", "free space"),
        inject=refused_write(errno.ENOSPC, bench)),
    Row("bench/model_table.py", "an unknown model", lambda s: ["resnet_51", "--write", s.table], 2,
        r"error: unknown model 'resnet_51'; registered models: cifar_plain110, .*"),
    Row("bench/model_table.py", "the table written", TABLE, 0, None, replaced=lambda s: [s.table],
        check=table_in_place),
    Row("bench/torch_speed.py", "SIGTERM while it starts", lambda s: ["--steps", "1"], 3,
        "SIGTERM: bench/torch_speed.py stopped while starting; nothing was written", start_up="SIGTERM"),
    Row("bench/torch_speed.py", "Ctrl-C while it starts", lambda s: ["--steps", "1"], 130,
        "Ctrl-C: bench/torch_speed.py stopped while starting; nothing was written", start_up="SIGINT"),
    Row("bench/torch_speed.py", "--steps 0", lambda s: ["--steps", "0"], 2,
        r"error: argument --steps: 0 is not a count \(1 or more\) \(python bench/torch_speed\.py --help\)"),
    Row("bench/torch_accuracy.py", "a missing --data folder", lambda s: ["--data", os.path.join(s.root, "cifar")], 2,
        r"error: /.*/cifar does not exist \(--data: an image folder root/<split>/<class>/<image>\)"),
    Row("bench/gpu.py", "a full disk", lambda s: ["--data", s.root, "--out", os.path.join(s.root, "gpu")], 2,
        r"error: cannot write /.*/gpu/results\.jsonl \(No space left on device\); free space, then run the same "
        r"command again; /.*/gpu/results\.jsonl is as it was", inject=gpu_full_disk, check=gpu_results_kept),
]  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """What every scene copies: torchvision resnet18 weights, their earlier conversion,
    and an earlier export of the fixture's run (uint8 input: another artifact than the rows')."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    weights = str(root / "resnet18.safetensors")
    save_file(torchvision.models.resnet18().state_dict(), weights)
    state = convert.load_state_dict(weights)
    converted = str(root / "converted")
    convert.write_checkpoint(convert.from_torchvision(state, "resnet18"), "resnet18", converted,
                             source="test earlier")  # fmt: skip
    exported = str(root / "exports" / "m.stablehlo")
    export(str(RUN), "stablehlo", exported, preprocess="uint8", platforms=["cpu"])
    return {"weights": weights, "converted": converted, "exports": os.path.dirname(exported)}


@pytest.fixture
def scene(sources, tmp_path) -> Scene:
    scene = Scene(str(tmp_path), sources["weights"])
    shutil.copytree(RUN, scene.run)
    shutil.copytree(sources["exports"], os.path.dirname(scene.export))
    shutil.copytree(sources["converted"], scene.converted, copy_function=os.link)  # 45 MB: linked (never written)
    os.makedirs(scene.foreign)
    with open(os.path.join(scene.foreign, "todo.txt"), "w") as f:
        f.write("mine\n")
    with open(scene.file, "w") as f:
        f.write("mine too\n")
    with open(scene.table, "w") as f:
        f.write(f"# Models\n{TABLE_START}\n| an earlier table |\n{TABLE_END}\n")
    return scene


def start_and_signal(row: Row, scene: Scene) -> tuple[int, str, str]:
    """``python -m resnet_jax.<command>``, signalled once it has put its handlers
    in place (its SIGTERM handler: /proc/<pid>/status), while it imports."""
    script = [str(ROOT / row.command)] if row.command.startswith("bench/") else ["-m", f"resnet_jax.{row.command}"]
    command = [sys.executable, *script, *row.args(scene)]
    proc = subprocess.Popen(command, env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/status") as f:
            caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", f.read())[1], 16)
        if caught >> (signal.SIGTERM - 1) & 1:
            break
        time.sleep(0.002)
    proc.send_signal(getattr(signal, row.start_up))
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def run_row(row: Row, scene: Scene, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Runs `row` in `scene` and asserts its status, its one line and that nothing was lost."""
    before = {path: digest(path) for path in scene.protected}
    if row.start_up:
        status, out, err = start_and_signal(row, scene)
    else:
        capfd.readouterr()
        if row.inject:
            row.inject(scene, monkeypatch)
        # exit_on_user_error's collection (frames a traceback held) takes 0.6 s in this process of JAX and torch
        monkeypatch.setattr(gc, "collect", lambda *args: 0)
        try:
            status = MAINS[row.command](row.args(scene))
        except SystemExit as e:
            status = e.code
        finally:
            monkeypatch.undo()
        out, err = capfd.readouterr()
    assert status == row.status, (status, err)
    lines = err.splitlines()
    if row.line is None:
        assert lines == [] and out.startswith("wrote "), (out, err)
    else:
        assert len(lines) == 1 and re.fullmatch(row.line, lines[0]), err
    replaced = row.replaced(scene)
    after = {path: digest(path) for path in scene.protected}
    for path in scene.protected:
        assert after[path] if path in replaced else after[path] == before[path], f"{path} lost or changed"
    assert temporaries(scene.root) == []
    if row.check:
        row.check(scene)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_a_command_meets_a_fault(row, scene, monkeypatch, capfd):
    run_row(row, scene, monkeypatch, capfd)


def test_python_m_convert_prints_one_line_and_no_runpy_warning(scene):
    """The whole command in its own process: a mismatch is its one line (before: 191 lines, after runpy's
    "found in sys.modules" warning, as the package imported the module it was about to run)."""
    row = next(r for r in ROWS if r.fault == "weights of another depth")
    before = digest(scene.converted)
    proc = subprocess.run([sys.executable, "-m", "resnet_jax.convert", *row.args(scene)], env=env_with_devices(1),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert re.fullmatch(row.line, proc.stderr.strip()), proc.stderr
    assert digest(scene.converted) == before and proc.stdout == "" and temporaries(scene.root) == []


def _main_guard(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.If) and ast.unparse(statement.test) == "__name__ == '__main__'"


@pytest.mark.parametrize("path", sorted(set((ROOT / "bench").glob("*.py")) - {ROOT / "bench" / "__init__.py",
                         ROOT / "bench" / "torch_peer.py"}), ids=lambda p: p.name)  # fmt: skip
def test_every_bench_script_goes_through_the_shared_entry(path):
    """A script a user runs takes its stops from its first statement (`errors.stop_while_starting`), parses its
    arguments with `bench.parser` (one line, status 2) and runs its main by `bench.run` (one line and a status for
    every stop): a new script that forgets one fails here."""
    tree = ast.parse(path.read_text())
    body = [s for s in tree.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            and not (isinstance(s, ast.ImportFrom) and s.module == "__future__")]  # fmt: skip
    first, last = body[0], body[-1]
    assert _main_guard(first) and ast.unparse(first.body[-1]) == f"stop_while_starting('bench/{path.name}')"
    assert _main_guard(last) and re.fullmatch(r"bench\.run\(main(, .*)?\)", ast.unparse(last.body[-1]))
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "bench.parser" in calls and "argparse.ArgumentParser" not in calls
