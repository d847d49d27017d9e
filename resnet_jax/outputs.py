"""How a command puts its output in place without losing the earlier one: the
new output is written beside it under a temporary name, then swapped in.

    .<name>.tmp-<pid>   the new output, while it is written
    .<name>.old-<pid>   the earlier one, moved aside during the swap, then removed

Each is hidden beside the output and names the process that made it. A process
that is stopped (SIGTERM, Ctrl-C) removes its own; one that is killed
(SIGKILL, a lost machine) leaves them, and the next command writing the same
output removes them (`remove_leftovers`), first putting an earlier output
back where the kill left nothing in its place. Used by `resnet_jax.export`
and `resnet_jax.convert`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection

# What marks a training run's workdir (or a population's, or a member's).
WORKDIR_FILES = ("checkpoints", "metrics.jsonl", "config.json", "lock")


def temporary(out: str, kind: str) -> str:
    """The hidden name beside `out` of this process's temporary `kind` ("tmp" or "old")."""
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{kind}-{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether another process `pid` runs (our own PID: an earlier process's leftover)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove_leftovers(out: str, folder_holds: Collection[str]) -> None:
    """Removes the temporaries beside `out` (a path) of processes that are gone; an
    earlier output moved aside (``old``) with nothing left at `out` is put back. A
    folder among them is removed only if it holds nothing but `folder_holds`'s
    names (what the command writes there)."""
    folder, base = os.path.split(os.path.abspath(out))
    pattern = re.compile(rf"\.{re.escape(base)}\.(tmp|old)-(\d+)(\.json)?")
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no such folder (yet), or not one: the write says why
        return
    for name in names:
        m = pattern.fullmatch(name)
        if not m or _alive(int(m[2])):
            continue
        path = os.path.join(folder, name)
        if m[1] == "old" and not m[3] and not os.path.lexists(out):
            os.replace(path, out)
        elif os.path.isdir(path) and not os.path.islink(path):
            if set(os.listdir(path)) <= set(folder_holds):
                shutil.rmtree(path)
        else:
            os.remove(path)


def swap(tmp: str, out: str) -> str | None:
    """Renames `tmp` onto `out`. A folder at `out` is moved aside first (an empty one
    removed); returns its new name, for `discard` once the swap is complete."""
    old = None
    if os.path.isdir(out) and not os.path.islink(out):
        if os.listdir(out):
            old = temporary(out, "old")
            os.replace(out, old)
        else:
            os.rmdir(out)
    os.replace(tmp, out)
    return old


def discard(path: str | None) -> None:
    """Removes `path` (a file or folder; None: nothing), if it is there."""
    if path is None or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)


def describe(path: str) -> str | None:
    """What is at `path`, in words, for a refusal to replace it (None: nothing, or an empty folder)."""
    if not os.path.lexists(path):
        return None
    if os.path.islink(path):
        return "a symbolic link"
    if not os.path.isdir(path):
        return "a file"
    names = sorted(os.listdir(path))
    if not names:
        return None
    shown = [f"{n}/" if os.path.isdir(os.path.join(path, n)) else n for n in names]
    marks = [s for s in shown if s.rstrip("/") in WORKDIR_FILES]
    if marks:
        kind = "a workdir" if marks == ["checkpoints/"] else "a training run's workdir"  # a conversion's: checkpoints/
        return f"{kind} (it holds {', '.join(marks)})"
    listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    return f"a folder holding {listed}"
