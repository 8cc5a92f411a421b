"""Operator commands: ``rollback`` and ``unblock``, on a live launcher or on a quiet state dir.

A running launcher owns the journal, so commands reach it over ``control.sock`` beside
``state.json`` (one JSON request, one JSON answer). With no launcher running the CLI
takes the lock and applies the same functions to the journal itself.
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

from launcher import faults, install
from launcher.journal import Journal, State

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
Handler = Callable[[dict[str, object]], dict[str, object]]


def rollback(
    state: State, bin_dir: Path, journal: Journal, reason: str, at: str,
    fault: faults.FaultHook | None = None,
) -> tuple[State, bool]:
    """Mark ``current`` bad and put ``previous`` back; (new state, whether it rolled back).

    Without a previous build nothing changes and the answer is False.

    The bad mark is journaled before any file moves, so it survives a kill at any step.
    """
    failed, target = state.current, state.previous
    if failed is None or target is None or not (bin_dir / install.OLD).exists():
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
    def __init__(self, state_dir: Path, handler: Handler) -> None:
        self.path = state_dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self.sock.listen(4)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.handler = handler

    def accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                if not isinstance(request, dict):
                    raise ValueError("request is not an object")
                answer = self.handler(request)
            except (OSError, ValueError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def send(state_dir: Path, request: dict[str, object], timeout_s: float = 60.0) -> dict[str, object]:
    """Ask the running launcher; raises OSError when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(state_dir / SOCKET_NAME))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("launcher answered with something other than an object")
    return answer
