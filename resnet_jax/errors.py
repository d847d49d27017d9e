"""Errors that a user's input causes, and how the command-line tools report them.

Every problem a user can fix (a wrong name or config value, a missing or
unreadable file, a checkpoint of another model, a diverged run) is raised as a
`UserError`. Each one also subclasses the built-in exception it refines
(``ValueError``, ``FileNotFoundError``, ...), so library code can catch either.
The tools (``train.py``, ``python -m resnet_jax.predict``, ``.convert``,
``.reproduce``, ``.plot``) print a `UserError` as one line, ``error: ...``,
and exit with status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


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
    """Training produced a non-finite loss."""


class MissingDependencyError(UserError, ImportError):
    """An optional package the request needs is not installed."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Inside a tool's ``main``: a `UserError` becomes ``error: <message>`` on
    stderr and exit status 2; other exceptions propagate with their traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
