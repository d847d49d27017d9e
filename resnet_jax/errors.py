"""Errors that a user's input causes, and how the command-line tools report them.

Every problem a user can fix (a wrong name or config value, a missing or
unreadable file, a checkpoint of another model or a damaged one, a busy
workdir, a workdir that cannot be written, a full disk, a diverged run, a
model that does not fit the device's memory) is raised as a `UserError`.
Each one also subclasses the built-in exception it refines (``ValueError``,
``FileNotFoundError``, ...), so library code can catch either. The tools
(``train.py``, ``python -m resnet_jax.predict``, ``.convert``, ``.reproduce``,
``.plot``) print a `UserError` as one line, ``error: ...``, and exit with
status 2; any other exception is a bug and keeps its traceback.
A run stopped by SIGTERM after saving raises `Preempted`: one line and exit
status 3 (``EXIT_PREEMPTED``), so a scheduler can tell it from success; one
stopped by Ctrl-C raises `Interrupted` (after saving) or `StoppedNow` (a second
Ctrl-C, or one before training began: nothing saved): one line and status 130
(``EXIT_INTERRUPTED``, the shell's for SIGINT); the survivors of a lost
process exit with status 75 (``EXIT_LOST_PEER``, `resnet_jax.peers`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C
EXIT_LOST_PEER = 75  # EX_TEMPFAIL: a process of a multi-process run was lost; restart all (resnet_jax.peers)


class UserError(Exception):
    """A problem with the user's input, named in the message; no traceback is needed."""


class ConfigError(UserError, ValueError):
    """A config value, flag or model option that cannot work (unknown name, batch size, ...)."""


class ConfigTypeError(ConfigError, TypeError):
    """A model option that the model does not have."""


class NotFoundError(UserError, FileNotFoundError):
    """A path, checkpoint or file that the user named does not exist."""


class DatasetError(UserError, ValueError):
    """The configured dataset cannot be found or read, or is not a classification dataset."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint belongs to another model, number of classes or shapes."""


class DivergedError(UserError, FloatingPointError):
    """Training produced a non-finite loss, or one above any healthy run's."""


class CheckpointDamagedError(UserError, OSError):
    """A checkpoint's files cannot be read (truncated, deleted or overwritten)."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (a full disk, a read-only or lost filesystem)."""


class CheckpointVersionError(UserError, ValueError):
    """A checkpoint's metadata is of a later schema than this version reads (written by a newer resnet_jax)."""


class WorkdirBusyError(UserError, RuntimeError):
    """Another live process is writing into the workdir."""


class WorkdirWriteError(UserError, OSError):
    """The workdir, or a file the run writes in it, cannot be written (a read-only mount or folder, a full disk)."""


class OutOfMemoryError(UserError, MemoryError):
    """The model, batch and image size need more memory than the device has."""


class ConfigFileError(ConfigError):
    """The config file cannot be loaded (a syntax error, an exception in ``get_config``, no such file)."""


class Preempted(Exception):
    """SIGTERM stopped training (after saving, or before its first step); the same command resumes."""


class Interrupted(Preempted):
    """Ctrl-C stopped training after saving; the same command resumes."""


class StoppedNow(KeyboardInterrupt):
    """Ctrl-C stopped the run at once, saving nothing (a second Ctrl-C, or one
    before training began); the checkpoints already written stay as they were."""


class MissingDependencyError(UserError, ImportError):
    """An optional package the request needs is not installed."""


class ExportError(UserError, ValueError):
    """The model cannot be written in the requested format (an architecture it cannot express)."""


class OutputWriteError(UserError, OSError):
    """A command's output (an export, a conversion) cannot be written: a read-only
    folder, a full disk, a parent that is a file; what was there before is kept."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Inside a tool's ``main``: a `UserError` becomes ``error: <message>`` on
    stderr and exit status 2, `Preempted` its message and status 3, Ctrl-C
    (`Interrupted`, `StoppedNow` or a bare ``KeyboardInterrupt``) its message
    and status 130; other exceptions propagate with their traceback."""
    try:
        yield
        return
    except UserError as e:
        message, status = f"error: {e}", EXIT_USER_ERROR
    except Interrupted as e:
        message, status = str(e), EXIT_INTERRUPTED
    except Preempted as e:
        message, status = str(e), EXIT_PREEMPTED
    except KeyboardInterrupt as e:
        message, status = str(e) or "Ctrl-C: stopped", EXIT_INTERRUPTED
    # Out of the except block the exception is gone; the collection frees the
    # frames its traceback held in cycles, and what they held (a batch in
    # Grain's shared memory, reported leaked at exit if never freed).
    gc.collect()
    with contextlib.suppress(OSError):  # a terminal closed (SIGHUP): the status still says it
        print(message, file=sys.stderr)
    sys.exit(status)


_BEFORE_EXIT_NOW: list[Callable[[], None]] = []


def before_exit_now(fn: Callable[[], None]) -> None:
    """Has `exit_now` call `fn` before it ends the process (`resnet_jax.peers`:
    the processes of a run that stop together leave in order)."""
    _BEFORE_EXIT_NOW.append(fn)


def exit_now(status: int) -> NoReturn:
    """Ends the process with `status`, stdout and stderr flushed, without the
    interpreter's shutdown: after a Ctrl-C that came in the middle of a JAX call
    (a compilation), that shutdown can crash in XLA's threads (a segmentation
    fault in place of status 130). The tools close what they write before they
    exit (checkpoints saved, logs closed), so nothing is lost."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fn in _BEFORE_EXIT_NOW:
        with contextlib.suppress(Exception):
            fn()
    os._exit(status)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """A tool's ``sys.exit(main())``, its Ctrl-C (status 130) and SIGTERM (3) by
    `exit_now`: either can land inside a JAX call (a SIGTERM in the middle of
    ``--mode=eval`` crashed the interpreter's shutdown 1 time in 5)."""
    try:
        status = main()
    except SystemExit as e:
        if e.code in (EXIT_INTERRUPTED, EXIT_PREEMPTED):
            exit_now(e.code)
        raise
    sys.exit(status)


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_advice(reason: str | OSError) -> str:
    """What to do about a failed write, from its OS error (or the error's text,
    for TensorStore's, which name the cause in words): free space, make the
    folder writable, or look at the cause."""
    number = reason.errno if isinstance(reason, OSError) else None
    text = str(reason)
    if number in _NOT_WRITABLE or any(w in text for w in ("Read-only", "Permission denied", "PERMISSION_DENIED")):
        return "make it writable (or copy the run to a writable place)"
    if number in _FULL or any(w in text for w in ("No space left", "quota", "RESOURCE_EXHAUSTED")):
        return "free space"
    return "fix the cause above"


def cannot_write(path: str, error: OSError, what: str = "") -> WorkdirWriteError:
    """The one-line error of a file or folder of the workdir that cannot be
    written: the path, the OS's reason and what to do."""
    reason = error.strerror or str(error)
    return WorkdirWriteError(
        f"cannot write {path} ({reason}){what}; {write_advice(error)}, then run the same command to resume"
    )


def cannot_write_output(path: str, error: BaseException, kept: str) -> OutputWriteError:
    """The one line of a command's output that could not be written: the path,
    the reason (the OS's, the first line of a library's error, or the parent
    that is a file), what to do, and `kept` (what is as it was)."""
    blocker = next((p for p in _parents(path) if os.path.lexists(p) and not os.path.isdir(p)), None)
    if blocker is not None:
        reason, advice = f"{blocker} is a file, not a folder", "choose another path"
    else:
        reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
        advice = write_advice(error if isinstance(error, OSError) and error.errno else reason)
        advice = "make it writable or choose another path" if advice.startswith("make it writable") else advice
    return OutputWriteError(f"cannot write {path} ({reason}); {advice}, then run the same command again; {kept}")


def _parents(path: str) -> list[str]:
    """The folders above `path`, the nearest first."""
    parents, path = [], os.path.abspath(path)
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        parents.append(path)
    return parents


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (a missing or malformed argument) are one
    line, ``error: <message> (<prog> --help)``, and status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} ({self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def warn(message: str) -> None:
    """One line, ``warning: <message>``, on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def run_app(
    main: Callable[[list[str]], object], define_flags: Callable[[], object] = lambda: None, config_file: bool = False
) -> None:
    """``absl.app.run(main)``, with a flag absl cannot parse (a value of the wrong
    type, a missing required flag) and an unknown ``--config.<field>`` reported as one
    line and status 2: ml_collections raises the latter while the flags are parsed, before `main`
    (or, for ``DEFINE_config_dict``, while the flag is defined: pass that as
    `define_flags`). With `config_file` (``--config`` names a file, as
    ``DEFINE_config_file``'s), a file that does not exist or fails to load (a
    syntax error, an exception in ``get_config``) is one line too: the file,
    the line and the error."""
    from absl import app, flags

    config_file = _config_path(sys.argv[1:]) if config_file else None
    try:
        if config_file and not os.path.isfile(config_file):
            raise ConfigFileError(f"config file {config_file} does not exist")
        define_flags()
        run_main(lambda: app.run(main, flags_parser=_parse_flags))  # its Ctrl-C by `exit_now`
    except ConfigError as e:  # a config file that does not exist, a flag absl cannot parse
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as e:
        if flags.FLAGS.is_parsed():
            raise  # from inside main: a bug
        where = _where_in(e, config_file) if config_file else None
        if where is None and not isinstance(e, (AttributeError, KeyError)):
            raise
        if where is not None:  # the file failed to load: its line and the error
            print(f"error: config file {where}: {type(e).__name__}: {getattr(e, 'msg', None) or e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        print(f"error: {_no_such_field(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parse of the command line, its errors (a value of the wrong type, a
    missing required flag, a value outside an enum's) a `ConfigError` of one line
    (absl's own parser prints "FATAL Flags parsing error" and exits 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("flag ")
        required = re.search(r"Flag (--\S+) must have a value other than None", message)
        raise ConfigError(f"{required[1]} is required" if required else message) from None


def _no_such_field(error: BaseException) -> str:
    """The one line of an unknown ``--config.<field>``: ml_collections' KeyError
    (wrapped in an AttributeError) holds the quoted field and, on its next line,
    a "Did you mean" hint."""
    text = error
    while isinstance(text, BaseException) and text.args:
        text = text.args[0]
    first, *rest = str(text).splitlines() or [""]
    field = first.strip("'\"")
    given = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.") and field in a]
    hint = re.search(r'Did you mean "([^"]+)"', " ".join(rest))
    return (f"the config has no field {field!r} ({', '.join(given) or 'a --config override'})"
            f"{f'; did you mean {hint[1]!r}? The' if hint else '; the'} fields are those of resnet_jax/config.py and "
            "the config file")  # fmt: skip


def _config_path(args: list[str]) -> str | None:
    """The file of ``--config=<file>[:args]`` (or ``--config <file>``) in `args`."""
    for k, arg in enumerate(args):
        value = arg[len("--config=") :] if arg.startswith("--config=") else None
        if arg == "--config" and k + 1 < len(args):
            value = args[k + 1]
        if value:
            return value.split(":")[0]
    return None


def _where_in(error: BaseException, path: str) -> str | None:
    """``"<file> line <n>"`` where `error` arose in the file `path` (a syntax
    error's own line, else the innermost frame of the traceback in that file)."""
    target = os.path.realpath(path)
    if isinstance(error, SyntaxError) and error.filename and os.path.realpath(error.filename) == target:
        return f"{path} line {error.lineno}"
    line = None
    tb = error.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return None if line is None else f"{path} line {line}"


# SIGINT first: a SIGTERM handler in place (/proc/<pid>/status) means both are.
_STOP_SIGNALS = {"SIGINT": ("Ctrl-C", EXIT_INTERRUPTED), "SIGTERM": ("SIGTERM", EXIT_PREEMPTED)}


def stop_while_starting(command: str) -> None:
    """A command's first statement, before its imports that take seconds: a
    SIGTERM or Ctrl-C while it starts ends it at once in one line (status 3 or
    130); nothing is written yet. `stops_raise` takes over once it runs."""
    import signal

    def stop(signum: int, frame: object) -> None:
        name, status = _STOP_SIGNALS[signal.Signals(signum).name]
        with contextlib.suppress(OSError):
            os.write(2, f"{name}: {command} stopped while starting; nothing was written\n".encode())
        os._exit(status)  # not an exception in the middle of an import

    stop.while_starting = True  # type: ignore[attr-defined]
    for name in _STOP_SIGNALS:
        signal.signal(getattr(signal, name), stop)


@contextlib.contextmanager
def stops_raise(command: str, untouched: str) -> Iterator[None]:
    """Inside: SIGTERM raises `Preempted` and Ctrl-C `Interrupted` at once (not
    ``KeyboardInterrupt``: asyncio, inside Orbax, lets that one out of a running
    loop and closes it under TensorStore's threads, a traceback each), with the
    line ``<SIGTERM|Ctrl-C>: <command> stopped; <untouched>``, so that the
    command's ``finally`` blocks remove what it had begun to write before
    `exit_on_user_error` prints the line (status 3, 130). A stop raised where
    Python drops exceptions (a garbage-collection callback, ``__del__``) is
    raised again by the next `stops_held`. The earlier handlers are put back
    at the end, but for `stop_while_starting`'s: the command's work is over,
    and a stop while it exits is ignored."""
    import signal

    def stop(signum: int, frame: object) -> None:
        name, _ = _STOP_SIGNALS[signal.Signals(signum).name]
        _requested[:] = [(Preempted if name == "SIGTERM" else Interrupted)(f"{name}: {command} stopped; {untouched}")]
        raise _requested[0]

    def unraisable(info: Any) -> None:  # a dropped stop is not printed: it is raised again
        if not (_requested and info.exc_value is _requested[0]):
            hook(info)

    previous = {name: signal.signal(getattr(signal, name), stop) for name in _STOP_SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        _requested.clear()
        sys.unraisablehook = hook
        for name, handler in previous.items():
            ended = getattr(handler, "while_starting", False)
            signal.signal(getattr(signal, name), signal.SIG_IGN if ended else handler)


_requested: list[BaseException] = []  # the stop `stops_raise` raised (one Python may have dropped)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Inside: SIGTERM and Ctrl-C wait for the block's end (the renames that put
    a command's output in place of an earlier one are never cut in half); the
    first that came meanwhile is then handled as it would have been. (Handlers,
    not a signal mask: in a process with threads, JAX's, the kernel hands a
    signal to any thread that does not mask it.) A stop that came before and
    was dropped (`stops_raise`) is raised here, so nothing is put in place."""
    import signal
    import threading

    if _requested:
        raise _requested[0]
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return
    came: list[int] = []
    held = [getattr(signal, name) for name in _STOP_SIGNALS]
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if came:
            handler = previous[came[0]]
            if callable(handler):
                handler(came[0], None)
            elif handler in (signal.SIG_DFL, None):  # the default's: SIGTERM ends the process
                signal.raise_signal(came[0])


def stop_behind(error: BaseException) -> BaseException | None:
    """The stop (`Preempted`, a Ctrl-C) behind `error`: its cause or context, as a
    library wraps what interrupted it (Orbax's save: a write error), or the one
    `stops_raise` raised that a library dropped; None if there is none."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, (Preempted, KeyboardInterrupt)):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return _requested[0] if _requested else None


def stop_name(stop: BaseException) -> str:
    """The signal that raised `stop`: SIGTERM for a `Preempted`, else Ctrl-C (a ``KeyboardInterrupt``)."""
    return "SIGTERM" if isinstance(stop, Preempted) and not isinstance(stop, Interrupted) else "Ctrl-C"
