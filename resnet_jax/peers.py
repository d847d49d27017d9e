"""A lost process ends a multi-process run within a bounded time, with one line.

Without this, when one process of a run dies (SIGKILL, OOM killer, a lost
host), the others either raise a collective error (Gloo: "Connection closed by
peer") and then hang ~100 s in JAX's shutdown barrier until the coordination
service's heartbeat timeout aborts them with a fatal dump, or, if they are not
in a collective, simply hang until that abort.

`PeerWatch` runs a small TCP watch beside JAX's runtime: process 0 listens on
an ephemeral port (published in the coordination service's key-value store),
every other process connects to it, and each side sends a heartbeat every
`HEARTBEAT_INTERVAL_S`. A watcher thread in each process declares a peer lost
when its connection closes (a killed process: the kernel closes its sockets,
seen at once) or when nothing has come from it for the peer timeout
(`PEER_TIMEOUT_S`, 20 s by default: a hung or unreachable process). Process 0
sees every process and tells the others which one was lost before it exits
itself; the others see process 0 directly. The process then prints one line,

    error: lost process 1 of 2 (connection closed); restart all processes to resume from the last checkpoint

and leaves with `os._exit` (status `EXIT_LOST_PEER`, 75 = EX_TEMPFAIL): no
traceback, no atexit handlers, so no wait in JAX's shutdown barrier. Restarting
every process resumes from the last complete checkpoint.

Bound: survivors exit as soon as a killed process's connection closes, and
within `PEER_TIMEOUT_S` of a process going silent (SIGSTOP, a cut network);
docs/faults.md has the measured times. The peer timeout stays well below JAX's own heartbeat
timeout (100 s), so the watch always speaks first.

Limits: when process 0 itself dies, JAX's coordination client in each survivor
learns it from the same closed connection and starts a fatal abort (jax 0.10's
`missed_heartbeat_callback` cannot be set from Python: jaxlib cannot pass it
the status and terminates). The watch's exit has come first in every run seen
(status 75, the one line last), but jaxlib may have logged a few lines
("Terminating process because the JAX distributed service detected fatal
errors ...", no stack dump) before it.

An uncaught exception in the main thread of a survivor that looks like a failed
collective waits for the watch's verdict instead of printing its traceback (see
`_excepthook`). A process that ends normally says so first (at exit, before
JAX's shutdown barrier), so that its closing connection raises no alarm. So
do the processes of a stop they all agreed on (`exiting_together`, then
`errors.exit_now`), and there process 0 leaves last, once the others have gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import selectors
import socket
import sys
import threading
import time
from typing import Any

from resnet_jax.errors import EXIT_LOST_PEER, before_exit_now, warn

PEER_TIMEOUT_S = 20.0
"""A peer from which nothing has come for this long is lost (connections that close are seen at once)."""
HEARTBEAT_INTERVAL_S = 1.0
LEAVE_TIMEOUT_S = 10.0
"""How long process 0 waits at a stop agreed by all (`exiting_together`) for the others to have exited."""
TIMEOUT_ENV = "RESNET_JAX_PEER_TIMEOUT_S"
"""Overrides `PEER_TIMEOUT_S` (seconds; 0 turns the watch off)."""

_KEY = "resnet_jax/peer_watch"
_COLLECTIVE_ERROR = re.compile(
    r"gloo|nccl|mpi|collective|connection|socket|peer|unavailable|deadline|heartbeat|coordination", re.IGNORECASE
)


def peer_timeout(default: float = PEER_TIMEOUT_S) -> float:
    """`default`, or the environment's `TIMEOUT_ENV`."""
    value = os.environ.get(TIMEOUT_ENV)
    return float(value) if value else default


class _Peer:
    def __init__(self, sock: socket.socket, process: int | None) -> None:
        self.sock = sock
        self.process = process  # None until process 0 has its hello
        self.buffer = b""
        self.last_seen = time.monotonic()
        self.leaving = False  # said bye: it exits normally, its connection may close


class PeerWatch:
    """The watch of one process; `start` makes one. Its thread is a daemon."""

    def __init__(self, process_id: int, num_processes: int, timeout: float) -> None:
        self.process_id = process_id
        self.num_processes = num_processes
        self.timeout = timeout
        self.token = ""
        self.lost = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _Peer] = {}
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._reported = False
        self.together = False  # every process is on its way out at the same point (`exiting_together`)
        self._thread = threading.Thread(target=self._run, name="resnet_jax-peer-watch", daemon=True)

    # -- set-up --------------------------------------------------------------------------------------------------

    def serve(self) -> int:
        """Process 0: listens on all interfaces; returns the port."""
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", 0))
        server.setblocking(False)
        self._server = server
        self._selector.register(server, selectors.EVENT_READ)
        return server.getsockname()[1]

    def connect(self, host: str, port: int, token: str) -> None:
        """Processes 1..N-1: connects to process 0's watch."""
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(f"hello {self.process_id} {token}\n".encode())
        self._add(sock, 0)

    def _add(self, sock: socket.socket, process: int | None) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[sock] = _Peer(sock, process)
        self._selector.register(sock, selectors.EVENT_READ)

    def start_thread(self) -> None:
        self._thread.start()

    # -- the watcher thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug here must not take the run down: it only loses the watch
            with contextlib.suppress(Exception):
                warn(f"the lost-process watch stopped ({type(e).__name__}: {e})")

    def _loop(self) -> None:
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                for peer in list(self._peers.values()):
                    self._send(peer, b".\n")
                next_beat = now + HEARTBEAT_INTERVAL_S
            for key, _ in self._selector.select(timeout=max(0.0, min(next_beat - time.monotonic(), 0.5))):
                if key.fileobj is self._server:
                    self._accept()
                else:
                    self._read(self._peers[key.fileobj])  # type: ignore[index]
            now = time.monotonic()
            for peer in list(self._peers.values()):
                if peer.process is None and now - peer.last_seen > 30:
                    self._drop(peer)  # never said hello: not one of ours
                elif peer.process is not None and not peer.leaving and now - peer.last_seen > self.timeout:
                    self._lost(peer.process, f"no heartbeat for {self.timeout:g} s")

    def _accept(self) -> None:
        assert self._server is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sock, _ = self._server.accept()
            self._add(sock, None)

    def _send(self, peer: _Peer, data: bytes) -> None:
        try:
            peer.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # buffer full: the heartbeat timeout decides
        except OSError:
            self._closed(peer)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            peer.last_seen = time.monotonic()
            peer.buffer += data
            *lines, peer.buffer = peer.buffer.split(b"\n")
            for line in lines:
                self._message(peer, line.decode(errors="replace").split())
        else:
            self._closed(peer)

    def _message(self, peer: _Peer, words: list[str]) -> None:
        if not words or words == ["."]:
            return
        if words[0] == "hello" and peer.process is None and len(words) == 3 and words[2] == self.token:
            peer.process = int(words[1]) if words[1].isdigit() else None
        elif peer.process is None:
            self._drop(peer)
        elif words[0] == "bye":
            peer.leaving = True
        elif words[0] == "lost" and self.process_id != 0 and len(words) >= 2 and words[1].isdigit():
            self._lost(int(words[1]), " ".join(words[2:]) or "reported by process 0")

    def _closed(self, peer: _Peer) -> None:
        if peer.process is None or peer.leaving:
            self._drop(peer)
        else:
            self._lost(peer.process, "connection closed")

    def _drop(self, peer: _Peer) -> None:
        self._peers.pop(peer.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.sock)
        peer.sock.close()

    # -- the verdict ---------------------------------------------------------------------------------------------

    def _lost(self, process: int, reason: str) -> None:
        with self._lock:
            if self._reported:
                return
            self._reported = True
        self.lost.set()
        if self.process_id == 0:
            # Tell the others which process was lost, and let them exit first: once process 0 (and with it JAX's
            # coordination service) is gone, their JAX clients abort them with a fatal dump.
            others = [p for p in self._peers.values() if p.process not in (None, process)]
            for peer in others:
                with contextlib.suppress(OSError):
                    peer.sock.setblocking(True)
                    peer.sock.settimeout(1)
                    peer.sock.sendall(f"lost {process} {reason}\n".encode())
            deadline = time.monotonic() + 2
            for peer in others:
                with contextlib.suppress(OSError):
                    peer.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    while peer.sock.recv(4096):
                        pass
        line = _line_start() + (
            f"error: lost process {process} of {self.num_processes} ({reason}); "
            "restart all processes to resume from the last checkpoint\n"
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.write(2, line.encode())
        os._exit(EXIT_LOST_PEER)

    def say_bye(self) -> None:
        """At a normal exit: this process's connections may now close without alarm."""
        for peer in list(self._peers.values()):
            with contextlib.suppress(OSError):
                peer.sock.send(b"bye\n")

    def leave(self) -> None:
        """At `errors.exit_now`, after `exiting_together`: says bye; process 0 then
        waits (at most `LEAVE_TIMEOUT_S`) until the others' connections have
        closed: they have exited before JAX's coordination service, which it
        hosts, goes (its loss would abort them with a fatal dump)."""
        if not self.together:
            return
        self.say_bye()
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while self.process_id == 0 and self._peers and time.monotonic() < deadline:
            time.sleep(0.01)


def _line_start() -> str:
    """A newline when a tqdm progress bar holds the console's current line (it ends in a carriage return)."""
    tqdm = sys.modules.get("tqdm")
    try:
        return "\n" if tqdm is not None and len(tqdm.tqdm._instances) else ""
    except Exception:
        return ""


_watch: PeerWatch | None = None


def exiting_together() -> None:
    """Every process of the run is on its way out from the same point (a stop
    they agreed on, `resnet_jax.training.stops.Agreement`), by `errors.exit_now`:
    there they leave in order (`PeerWatch.leave`), no exit taken for a loss."""
    if _watch is not None:
        _watch.together = True


def start(
    client: Any, coordinator_address: str | None, process_id: int, num_processes: int, timeout: float | None = None
) -> PeerWatch | None:
    """Starts this process's watch, after ``jax.distributed.initialize``. `client` is JAX's
    distributed runtime client (its key-value store carries process 0's port); returns None
    (with a warning on stderr when it could not be set up) if there is nothing to watch."""
    global _watch
    timeout = peer_timeout() if timeout is None else timeout
    if num_processes <= 1 or timeout <= 0 or _watch is not None:
        return _watch
    watch = PeerWatch(process_id, num_processes, timeout)
    try:
        if process_id == 0:
            watch.token = secrets.token_hex(8)
            port = watch.serve()
            client.key_value_set(_KEY, f"{port} {watch.token}")
        else:
            if not coordinator_address:
                raise ValueError("the coordinator's address is unknown")
            host = coordinator_address.rsplit(":", 1)[0].strip("[]")
            port, watch.token = client.blocking_key_value_get(_KEY, 60_000).split()
            watch.connect(host, int(port), watch.token)
    except Exception as e:  # the run works without the watch; a lost process then hangs the others
        print(f"warning: no lost-process watch ({type(e).__name__}: {e}); a lost process may hang the others",
              file=sys.stderr)  # fmt: skip
        return None
    watch.start_thread()
    _watch = watch
    atexit.register(watch.say_bye)  # runs before JAX's shutdown barrier (atexit is last in, first out)
    before_exit_now(watch.leave)
    previous = sys.excepthook
    sys.excepthook = lambda *exc: _excepthook(watch, previous, *exc)
    return watch


def _excepthook(watch: PeerWatch, previous: Any, exc_type: type, exc: BaseException, tb: Any) -> None:
    """An uncaught exception of the main thread: if it may come from a lost peer (a failed
    collective), waits up to the peer timeout for the watch's verdict (which prints its one
    line and exits) before printing the traceback; any other exception waits 2 s, so that
    a collective error that does not say so is not printed when a peer is gone."""
    if not issubclass(exc_type, KeyboardInterrupt):
        wait = watch.timeout + 2 * HEARTBEAT_INTERVAL_S if _COLLECTIVE_ERROR.search(str(exc)) else 2.0
        if watch.lost.wait(wait):
            time.sleep(30)  # the watcher thread is exiting the process
    previous(exc_type, exc, tb)
