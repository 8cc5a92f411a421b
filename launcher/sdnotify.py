"""systemd's notification protocol (sd_notify(3)) in pure Python: one datagram per message.

A message is newline-separated ``KEY=VALUE`` lines sent as a single AF_UNIX datagram to
``$NOTIFY_SOCKET``: a path (``/run/systemd/notify``) or an abstract name (``@name``, the
``@`` standing for a leading NUL). The kernel attaches the sender's credentials, which is
how systemd checks ``NotifyAccess=main``. Without ``NOTIFY_SOCKET`` every call is a no-op.
Delivery is advisory: errors are logged at debug level and reported as ``False``, never
raised, so a vanished manager cannot take the supervisor down. Standard library only.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + raw[1:] if raw.startswith("@") else raw) or None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, text: str = "", **fields: object) -> bool:
        """Send ``text`` and ``KEY=VALUE`` lines in one datagram; True when it was sent."""
        if self.address is None:
            return False
        lines = [text] if text else []
        lines += [f"{key}={value}" for key, value in fields.items()]
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1) if status is None else self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def watchdog_interval_s(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, half of WATCHDOG_USEC as sd_watchdog_enabled(3)
        advises; None when there is no socket, no watchdog, or it is meant for another pid."""
        if self.address is None:
            return None
        try:
            usec = int(self._watchdog_usec)
            if self._watchdog_pid and int(self._watchdog_pid) != os.getpid():
                return None
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None
