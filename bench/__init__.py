"""The benchmark scripts' one entry: every stop of ``python bench/<script>.py`` is
one line with a documented status (docs/faults.md), as for the package's commands.

Each script a user runs begins with ``errors.stop_while_starting("bench/<script>.py")``
(a SIGTERM or Ctrl-C during its imports, which take seconds: one line, status 3
or 130), parses its arguments with `parser` (a malformed or out-of-range
argument: one line, status 2), and ends with ``bench.run(main)``: a SIGTERM or
Ctrl-C while it measures stops it at once in one line (status 3 or 130), a
`resnet_jax.errors.UserError` (a missing folder or file, `existing`; an output
that cannot be written, `write_text`) is one line and status 2. What a script
measures is its own; this module only decides how it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from resnet_jax import errors


def script(file: str) -> str:
    """``bench/<name>.py``: how a script is named in its lines."""
    return f"bench/{os.path.basename(file)}"


def parser(file: str, doc: str) -> errors.ArgumentParser:
    """The argument parser of the script `file`, described by the first line of
    `doc`: a malformed argument is one line, ``error: ... (python bench/<name>.py --help)``, status 2."""
    return errors.ArgumentParser(prog=f"python {script(file)}", description=doc.split("\n")[0])


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count, a size, a batch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count (1 or more)")
    return value


def existing(path: str, what: str) -> str:
    """`path` if something is there, else a `NotFoundError` naming it and `what` it should be."""
    if not os.path.exists(path):
        raise errors.NotFoundError(f"{path} does not exist ({what})")
    return path


def write_text(path: str, text: str) -> None:
    """`text` into `path` whole or not at all: written to ``.<name>.tmp-<pid>`` beside
    it and renamed over it (a SIGTERM or Ctrl-C waits for the rename), so a stop
    or a failed write leaves the earlier file as it was and no temporary file; a
    write error is one line naming the path and the OS's reason (status 2)."""
    kept = f"{path} is as it was" if os.path.exists(path) else "nothing was written"
    temporary = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w") as f:
            f.write(text)
        with errors.stops_held():
            os.replace(temporary, path)
    except OSError as e:
        raise errors.cannot_write_output(path, e, kept) from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def entry(main: Callable[[list[str] | None], int | None], kept: str = "nothing was written") -> Callable[..., int]:
    """`main` (its arguments -> its status, None for 0) as its script runs it: a
    SIGTERM or Ctrl-C stops it at once with ``<SIGTERM|Ctrl-C>: bench/<name>.py
    stopped; <kept>``, and it and a `UserError` end in one line and their status."""
    name = script(sys.modules[main.__module__].__file__ or main.__module__)

    def guarded(argv: list[str] | None = None) -> int:
        with errors.exit_on_user_error(), errors.stops_raise(name, kept):
            status = main(argv) or 0
            with errors.stops_held():  # a stop a library dropped on the way (JAX's gc callback) is raised here
                return status

    return guarded


def run(main: Callable[[list[str] | None], int | None], kept: str = "nothing was written") -> NoReturn:
    """A script's last statement: `entry` (`main`), its status the process's (`errors.run_main`)."""
    errors.run_main(entry(main, kept))
