"""One writer per workdir: ``<workdir>/lock``, held while a training run lives.

The lock is an advisory `fcntl.flock` on that file, which the kernel releases
when its process ends, however it ends (SIGKILL, OOM, a lost machine whose
NFS locks expire). The file says who holds it (PID, host, start time): a second run on
the same workdir is refused with that line, and a run that finds the file
filled in but the lock free takes it over with a warning (its holder is gone).
Local disks and NFS honour flock; object stores mounted as files (gcsfuse, for
GCS) do not, so there the lock protects nothing: give each run its own workdir.
In a multi-process run only process 0 takes it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import Any

import jax

from resnet_jax.errors import WorkdirBusyError, cannot_write, warn

LOCK_FILE = "lock"
_WHY = ": training writes its lock, checkpoints and metrics in the workdir (--mode=eval and predict only read it)"


class WorkdirLock:
    """``with WorkdirLock(workdir):`` the run's exclusive hold on `workdir`."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() != 0:
            return self
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only mount or folder, a file in the way
            raise cannot_write(e.filename or self.path, e, _WHY) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise WorkdirBusyError(
                f"{os.path.dirname(self.path)} is in use by {holder}; wait for that run to end or stop it, "
                "or use another --workdir"
            ) from None
        previous = _read(fd)
        if previous:
            warn(f"taking over the lock of {os.path.dirname(self.path)} from {_describe(previous)}, which is gone")
        since = datetime.datetime.now().isoformat("T", "seconds")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # empty: released on purpose (the file stays, so no race on unlink)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict[str, Any] | None:
    data = os.pread(fd, 4096, 0)
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"pid": "?", "host": "?", "since": "?"}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"PID {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
