"""The agent's own ``NOTIFY_SOCKET``: a datagram socket the resident reads in its loop.

The agent speaks sd_notify(3) to it exactly as it would to systemd: ``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``, one datagram per message. The kernel
attaches the sender's credentials (``SO_PASSCRED``), so every message is attributed to the
process that sent it, not to whatever it claims: a message counts for an agent when its
sender is that agent or a process in that agent's process group (a wrapper script's
server), and only from our own uid. Anything else is dropped. That is what tells the new
agent's ``READY=1`` from the old one's during an overlapping hand-over.

The socket lives in the launcher's private ``run/`` directory (0700); when that path is
too long for ``sockaddr_un`` an abstract name is used, and the credential check alone
keeps other processes out. Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from launcher.loop import Loop

log = logging.getLogger(__name__)

SOCKET_NAME = "agent-notify.sock"
MAX_DATAGRAM = 4096
MAX_PER_TURN = 64  # a flood cannot hold the loop: the rest waits for the next turn
_UCRED = struct.Struct("3i")

Handler = Callable[[int, dict[str, str]], None]


def parse(data: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines to a dict (a later key wins); lines without '=' are ignored."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifyServer:
    def __init__(self, run_dir: Path, loop: Loop, handler: Handler) -> None:
        self.loop = loop
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX,
                                  socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.path: Path | None = run_dir / SOCKET_NAME
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if len(os.fsencode(str(self.path))) <= 107:
                self.path.unlink(missing_ok=True)
                old = os.umask(0o177)
                try:
                    self.sock.bind(str(self.path))
                finally:
                    os.umask(old)
                self.address = str(self.path)
            else:
                self.path = None
                name = f"nginx-manager-notify-{os.getpid()}-{os.urandom(8).hex()}"
                self.sock.bind("\0" + name)
                self.address = "@" + name
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self.read)

    def read(self) -> None:
        for _ in range(MAX_PER_TURN):
            try:
                data, anc, _, _ = self.sock.recvmsg(MAX_DATAGRAM,
                                                    socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("reading the agent's notify socket: %s", exc)
                return
            pid = _sender(anc)
            if pid is None:
                continue
            self.handler(pid, parse(data))

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's pid from SCM_CREDENTIALS when it runs as our uid, else None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                and len(data) >= _UCRED.size:
            pid, uid, _gid = _UCRED.unpack(data[:_UCRED.size])
            return pid if uid == os.getuid() else None
    return None


def belongs_to(sender: int, agent_pid: int) -> bool:
    """The sender is the agent or in its process group (the agent leads its own group)."""
    if sender == agent_pid:
        return True
    try:
        return os.getpgid(sender) == agent_pid
    except OSError:
        return False
