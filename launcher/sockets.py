"""The listening sockets the launcher holds for every agent generation (``--listen``).

Each ``--listen ADDR`` (``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``) is bound once, with
a backlog of at least ``BACKLOG``, and kept open for the launcher's whole life, so that a
connection that arrives while no agent runs waits in the socket's queue instead of being
refused. Sockets systemd passed to the launcher (socket activation: its ``LISTEN_FDS``
and ``LISTEN_PID``) are taken over the same way and handed on.

The agent receives them as fd 3 onwards with ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and
``LISTEN_PID`` (see ``launcher.passfds``). In the launcher every held descriptor is
close-on-exec and numbered ``FIRST_HELD`` or above, so that neither a worker nor any other
helper inherits one, and moving them to 3, 4, ... in the agent never overwrites one that
is still to be moved. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 on current kernels)
MIN_BACKLOG = 128
FIRST_HELD = 64
MAX_SOCKETS = 32
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class ListenAddr:
    family: int
    address: str | tuple[str, int]
    text: str

    @property
    def name(self) -> str:
        """The ``LISTEN_FDNAMES`` entry: systemd allows no ':' there."""
        if self.family == socket.AF_UNIX:
            return "unix"
        assert isinstance(self.address, tuple)
        return f"tcp-{self.address[1]}"


def parse_listen(text: str) -> ListenAddr:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (an absolute path); ValueError names
    what is wrong."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: unix: needs an absolute path")
        if len(os.fsencode(path)) > 107:
            raise ValueError(f"{text!r}: a unix socket path must be at most 107 bytes")
        return ListenAddr(socket.AF_UNIX, path, text)
    host, sep, port = text.rpartition(":")
    v6 = host.startswith("[") and host.endswith("]")
    if v6:
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or (":" in host and not v6):
        raise ValueError(f"{text!r} is not HOST:PORT, [V6]:PORT or unix:PATH "
                         "(port 1-65535)")
    return ListenAddr(socket.AF_INET6 if v6 else socket.AF_INET, (host, int(port)), text)


@dataclass
class Held:
    sock: socket.socket
    name: str
    shown: str


class HeldSockets:
    """The sockets handed to the agent, in ``LISTEN_FDS`` order."""

    def __init__(self) -> None:
        self.held: list[Held] = []

    def __bool__(self) -> bool:
        return bool(self.held)

    def __len__(self) -> int:
        return len(self.held)

    def fds(self) -> list[int]:
        return [h.sock.fileno() for h in self.held]

    def env(self) -> dict[str, str]:
        """The agent's ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (``LISTEN_PID`` is its own pid,
        set between fork and exec)."""
        if not self.held:
            return {}
        return {"LISTEN_FDS": str(len(self.held)),
                "LISTEN_FDNAMES": ":".join(h.name for h in self.held)}

    def describe(self) -> str:
        return ", ".join(h.shown for h in self.held)

    def bind(self, addrs: tuple[ListenAddr, ...]) -> None:
        """Bind every ``--listen`` address; OSError (with the address in its text) on the
        first that cannot be bound, after closing what this call bound."""
        done: list[Held] = []
        try:
            for addr in addrs:
                done.append(Held(_bound(addr), addr.name, addr.text))
        except OSError:
            for h in done:
                h.sock.close()
            raise
        self.held += done
        self._check_count()

    def adopt_systemd(self, environ: MutableMapping[str, str], pid: int) -> int:
        """Take over the sockets systemd passed to this process (``LISTEN_PID`` is ours);
        the variables are removed from ``environ`` either way, so that no child sees
        them under their old values. Returns how many were taken."""
        fds_text = environ.pop("LISTEN_FDS", "")
        pid_text = environ.pop("LISTEN_PID", "")
        names_text = environ.pop("LISTEN_FDNAMES", "")
        if not fds_text:
            return 0
        try:
            n, owner = int(fds_text), int(pid_text)
        except ValueError:
            log.warning("ignoring LISTEN_FDS=%r LISTEN_PID=%r: not numbers", fds_text, pid_text)
            return 0
        if owner != pid:
            log.warning("ignoring LISTEN_FDS: LISTEN_PID=%d is not this process (%d)", owner,
                        pid)
            return 0
        names = names_text.split(":") if names_text else []
        taken = 0
        for i in range(max(0, min(n, MAX_SOCKETS))):
            fd = SD_LISTEN_FDS_START + i
            try:
                mode = os.fstat(fd).st_mode
            except OSError:
                log.warning("LISTEN_FDS names fd %d, which is not open; skipped", fd)
                continue
            if not stat.S_ISSOCK(mode):
                log.warning("LISTEN_FDS names fd %d, which is not a socket; skipped", fd)
                continue
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_HELD)
            os.close(fd)
            sock = socket.socket(fileno=moved)
            name = names[i] if i < len(names) and names[i] else f"systemd-{i}"
            self.held.append(Held(sock, name, f"{name} (from systemd: {_shown(sock)})"))
            taken += 1
        self._check_count()
        return taken

    def close(self) -> None:
        for h in self.held:
            with contextlib.suppress(OSError):
                h.sock.close()
        self.held = []

    def _check_count(self) -> None:
        if len(self.held) > MAX_SOCKETS:
            raise OSError(f"at most {MAX_SOCKETS} listening sockets can be handed on")


def _bound(addr: ListenAddr) -> socket.socket:
    sock = socket.socket(addr.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if addr.family == socket.AF_UNIX:
            assert isinstance(addr.address, str)
            _remove_stale(Path(addr.address))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if addr.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr.address)
        sock.listen(max(BACKLOG, MIN_BACKLOG))
        moved = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, FIRST_HELD)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr.text}: {exc.strerror or exc}") \
            from None
    sock.close()
    return socket.socket(fileno=moved)


def _remove_stale(path: Path) -> None:
    """A socket file left by an earlier launcher is replaced; anything else is not touched."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _shown(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"unix:{name}" if name else "unix"

