"""Operator commands: ``rollback`` and ``unblock``, on a live launcher or on a quiet state dir.

A running launcher owns the journal, so commands reach it over ``run/control.sock`` (one
JSON request, one JSON answer; ``run/`` is the launcher's private directory). With no
launcher running the CLI takes the lock and applies the same functions to the journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from launcher import faults, install, permissions
from launcher.journal import Journal, State
from launcher.loop import Loop

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
REQUEST_DEADLINE_S = 2.0
MAX_REQUEST = 65536
MAX_CONNECTIONS = 8
Handler = Callable[[dict[str, object]], dict[str, object]]


def rollback(
    state: State, bin_dir: Path, journal: Journal, reason: str, at: str,
    fault: faults.FaultHook | None = None, shas: install.Hasher = install.file_shas,
    *, checked: bool = False,
) -> tuple[State, bool]:
    """Mark ``current`` bad and put ``previous`` back; (new state, whether it rolled back).

    Without another build to go back to (``install.rollback_refusal``) nothing changes
    and the answer is False. ``checked``: the caller has just asked ``rollback_refusal``
    (the resident does, before it stops the agent, so that hashing both builds is not
    time in which no agent serves).

    The bad mark is journaled before any file moves, so it survives a kill at any step.
    """
    failed, target = state.current, state.previous
    if failed is None or target is None or (
            not checked and install.rollback_refusal(state, bin_dir, shas)):
        return state, False
    state = state.with_bad(failed, reason, at)
    state = journal.save(dataclasses.replace(state, phase="rolling_back", rollback_to=target))
    if fault is not None:
        fault("rollback.journaled")
    install.restore_previous(bin_dir)
    if fault is not None:
        fault("rollback.renamed")
    state = journal.save(dataclasses.replace(
        state, phase="committed", current=target, previous=None, trial=None, rollback_to=None,
        etag=None, last_modified=None))
    return state, True


def unblock(state: State, version: str) -> tuple[State, int]:
    """Lift the bad mark of every build of ``version``; forget validators so the next check
    fetches the manifest in full."""
    n = sum(1 for b in state.bad if b.version == version)
    state = state.without_bad(version)
    return dataclasses.replace(state, etag=None, last_modified=None), n


class ControlServer:
    """``control.sock``: one JSON request line in, one JSON answer out, per connection.

    Connections are served by the loop without blocking it: each reads as its data
    arrives, and each has one overall deadline (``REQUEST_DEADLINE_S``) for its whole
    request, however slowly it trickles in. A malformed, deeply nested, oversized or late
    request gets an error answer; the loop goes on.
    """

    def __init__(self, state_dir: Path, handler: Handler, loop: Loop) -> None:
        self.path = socket_path(state_dir)
        self.path.unlink(missing_ok=True)  # unlink never follows a symlink
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # born 0600: no instant at which others may connect
        try:
            self.sock.bind(str(self.path))
            self.sock.listen(MAX_CONNECTIONS)
        except OSError:
            self.sock.close()
            raise
        finally:
            os.umask(old)
        self.sock.setblocking(False)
        self.handler = handler
        self.loop = loop
        self.conns: dict[int, tuple[socket.socket, bytearray]] = {}
        self.peers: dict[int, int | None] = {}  # the uid at the other end (SO_PEERCRED)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            conn.close()
            return
        conn.setblocking(False)
        fd = conn.fileno()
        self.conns[fd] = (conn, bytearray())
        self.peers[fd] = peer_uid(conn)
        self.loop.add_reader(fd, lambda: self._read(fd))
        self.loop.timers.set(f"control.{fd}", REQUEST_DEADLINE_S,
                             lambda: self._answer(fd, {"ok": False, "error": "bad request: "
                                                       "not complete within "
                                                       f"{REQUEST_DEADLINE_S:g}s"}))

    def _read(self, fd: int) -> None:
        conn, buf = self.conns[fd]
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if not chunk or b"\n" in buf or len(buf) > MAX_REQUEST:
            self._answer(fd, self._handle(bytes(buf), self.peers.get(fd)))

    def _handle(self, data: bytes, uid: int | None = None) -> dict[str, object]:
        if len(data) > MAX_REQUEST:
            return {"ok": False, "error": f"bad request: larger than {MAX_REQUEST} bytes"}
        try:
            request = json.loads(data.split(b"\n", 1)[0])
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"bad request: not JSON ({type(exc).__name__})"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad request: not a JSON object"}
        request.pop("peer_uid", None)  # only the kernel says who is asking
        if uid is not None:
            request["peer_uid"] = uid
        return self.handler(request)

    def _answer(self, fd: int, answer: dict[str, object]) -> None:
        conn, _ = self.conns.pop(fd)
        self.peers.pop(fd, None)
        self.loop.remove_reader(fd)
        self.loop.timers.cancel(f"control.{fd}")
        with conn, contextlib.suppress(OSError):
            conn.settimeout(0.5)  # a short answer into a local socket buffer
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        for fd in list(self.conns):
            self._answer(fd, {"ok": False, "error": "launcher stopping"})
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):  # a state dir turned read-only keeps the name
            self.path.unlink(missing_ok=True)


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (Linux SO_PEERCRED)."""
    import struct

    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, struct.error):
        return None
    return int(uid)


def socket_path(state_dir: Path) -> Path:
    """``run/control.sock``: in the launcher's private directory (``launcher.permissions``)."""
    return state_dir / permissions.RUN_DIR / SOCKET_NAME


def send(state_dir: Path, request: dict[str, object], timeout_s: float = 60.0) -> dict[str, object]:
    """Ask the running launcher; raises OSError when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(socket_path(state_dir)))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("launcher answered with something other than an object")
    return answer
