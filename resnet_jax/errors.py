"""Errors that a user's input causes, and how the command-line tools report them.

Every problem a user can fix (a wrong name or config value, a missing or
unreadable file, a checkpoint of another model or a damaged one, a busy
workdir, a full disk, a diverged run) is raised as a
`UserError`. Each one also subclasses the built-in exception it refines
(``ValueError``, ``FileNotFoundError``, ...), so library code can catch either.
The tools (``train.py``, ``python -m resnet_jax.predict``, ``.convert``,
``.reproduce``, ``.plot``) print a `UserError` as one line, ``error: ...``,
and exit with status 2; any other exception is a bug and keeps its traceback.
A run stopped by SIGTERM after saving raises `Preempted`: one line and exit
status 3 (``EXIT_PREEMPTED``), so a scheduler can tell it from success; the
survivors of a lost process exit with status 75 (``EXIT_LOST_PEER``, `resnet_jax.peers`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3
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


class WorkdirBusyError(UserError, RuntimeError):
    """Another live process is writing into the workdir."""


class Preempted(Exception):
    """SIGTERM stopped training (after saving, or before its first step); the same command resumes."""


class MissingDependencyError(UserError, ImportError):
    """An optional package the request needs is not installed."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Inside a tool's ``main``: a `UserError` becomes ``error: <message>`` on
    stderr and exit status 2, `Preempted` its message and status 3; other
    exceptions propagate with their traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


def warn(message: str) -> None:
    """One line, ``warning: <message>``, on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def run_app(main: Callable[[list[str]], object], define_flags: Callable[[], object] = lambda: None) -> None:
    """``absl.app.run(main)``, with an unknown ``--config.<field>`` reported as one
    line: ml_collections raises it while the flags are parsed, before `main`
    (or, for ``DEFINE_config_dict``, while the flag is defined: pass that as
    `define_flags`)."""
    from absl import app, flags

    try:
        define_flags()
        app.run(main)
    except (AttributeError, KeyError) as e:
        if flags.FLAGS.is_parsed():
            raise  # from inside main: a bug
        field = str(e).strip("'\"")
        given = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.") and field in a]
        print(f"error: the config has no field {field!r} ({', '.join(given) or 'a --config override'}); "
              "the fields are those of resnet_jax/config.py and the config file", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
