"""Sockets and readiness from whoever started the agent (the launcher, or systemd itself).

- ``inherited``: the listening sockets passed as fd 3 onwards (sd_listen_fds(3):
  ``LISTEN_FDS``, ``LISTEN_PID`` naming this process, ``LISTEN_FDNAMES``).
- ``Notifier``: sd_notify(3) datagrams to ``NOTIFY_SOCKET`` (``READY=1``, ``STATUS=``,
  ``WATCHDOG=1``, ``STOPPING=1``), and the watchdog interval from ``WATCHDOG_USEC``.

Both remove their variables from the environment they read, as the C library does with
``unset_environment``, so that nothing the agent starts (nginx -v) sees them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
MAX_FDS = 32


def inherited(environ: MutableMapping[str, str]) -> list[tuple[socket.socket, str]]:
    """The listening sockets passed to this process, with their names; [] when none."""
    fds_text = environ.pop("LISTEN_FDS", "")
    pid_text = environ.pop("LISTEN_PID", "")
    names = environ.pop("LISTEN_FDNAMES", "").split(":")
    if not fds_text:
        return []
    try:
        n = int(fds_text)
        if int(pid_text) != os.getpid():
            log.warning("LISTEN_PID=%s is not this process: not using LISTEN_FDS", pid_text)
            return []
    except ValueError:
        log.warning("LISTEN_FDS=%r LISTEN_PID=%r are not numbers: ignored", fds_text, pid_text)
        return []
    found = []
    for i in range(max(0, min(n, MAX_FDS))):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("LISTEN_FDS names fd %d, which is not a socket (%s): skipped", fd, exc)
            continue
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                                   socket.SO_ACCEPTCONN):
            log.warning("fd %d is not a listening stream socket: skipped", fd)
            sock.detach()
            continue
        found.append((sock, names[i] if i < len(names) and names[i] else f"fd{fd}"))
    return found


class Notifier:
    def __init__(self, environ: MutableMapping[str, str]) -> None:
        raw = environ.pop("NOTIFY_SOCKET", "")
        self.address = ("\0" + raw[1:] if raw.startswith("@") else raw) or None
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        with contextlib.suppress(ValueError):
            if int(usec) > 0 and (not pid or int(pid) == os.getpid()):
                self.watchdog_s = int(usec) / 1_000_000
        self.sock: socket.socket | None = None
        if self.address is not None:
            with contextlib.suppress(OSError):
                self.sock = socket.socket(socket.AF_UNIX,
                                          socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, **fields: object) -> bool:
        if self.sock is None or self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self.sock.sendto(payload, self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ping_every_s(self) -> float | None:
        """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
