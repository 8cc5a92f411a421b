"""What the launcher hands every agent generation: its listening sockets and a notify socket.

Set up once per launcher (``open``): the ``--listen`` sockets are bound, the ones systemd
passed are taken over (``adopt_systemd``, before anything is spawned), and the agent's own
``NOTIFY_SOCKET`` is opened. The agent's environment gets ``LISTEN_FDS``,
``LISTEN_FDNAMES``, ``NOTIFY_SOCKET`` and, with ``--ready notify``, ``WATCHDOG_USEC``;
``spawn`` starts it with the sockets as fd 3 onwards (``launcher.passfds``).

In container mode the sockets die with the launcher when it exits 100 after a swap: the
kubelet restarts the container, and connections are refused until the new one listens.
That is said at start; the rest (crash restarts, rollbacks inside one container life)
still queues connections.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence

from launcher import passfds, permissions
from launcher.child import Child
from launcher.errors import ConfigError
from launcher.loop import Loop
from launcher.notifyd import NotifyServer
from launcher.reaper import Reaper
from launcher.settings import Settings
from launcher.sockets import HeldSockets, parse_listen

log = logging.getLogger(__name__)


class Handoff:
    def __init__(self) -> None:
        self.sockets = HeldSockets()
        self.notify: NotifyServer | None = None
        self.serving: Callable[[], bool] = lambda: False  # an agent still serves (overlap)
        self._blocking: dict[int, bool] | None = None  # each socket's flag, as we hold it

    def adopt_systemd(self, environ: MutableMapping[str, str]) -> None:
        n = self.sockets.adopt_systemd(environ, os.getpid())
        if n:
            log.info("took over %d socket(s) from systemd: %s", n, self.sockets.describe())

    def open(self, s: Settings, loop: Loop, container: bool,
             on_message: Callable[[int, dict[str, str]], None]) -> dict[str, str]:
        """Bind, open the notify socket; the agent's extra environment. ConfigError when a
        ``--listen`` address cannot be bound."""
        try:
            self.sockets.bind(tuple(parse_listen(a) for a in s.listen))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        if self.sockets:
            log.info("holding %d listening socket(s) for the agent: %s", len(self.sockets),
                     self.sockets.describe())
            if container:
                log.warning("container mode: the listening sockets close when the launcher "
                            "exits 100 after a swap, so connections are refused until the "
                            "restarted container listens again (--handover does not apply "
                            "to updates there)")
        try:
            self.notify = NotifyServer(s.state_dir / permissions.RUN_DIR, loop, on_message)
        except OSError as exc:
            if s.ready == "notify":
                raise ConfigError(f"--ready notify: cannot open the agent's notify socket: "
                                  f"{exc}") from exc
            log.warning("no notify socket for the agent (%s); its READY=1 is not heard", exc)
        env = self.sockets.env()
        if self.notify is not None:
            env["NOTIFY_SOCKET"] = self.notify.address
            if s.ready == "notify" and s.agent_watchdog_s > 0:
                env["WATCHDOG_USEC"] = str(int(s.agent_watchdog_s * 1_000_000))
        return env

    def spawn(self, label: str, argv: Sequence[str], env: Mapping[str, str],
              reaper: Reaper) -> Child:
        """The agent, with the held sockets as fd 3 onwards when there are any."""
        fds = self.sockets.fds()
        if not fds:
            return Child.start(label, argv, env, reaper)
        self._restore_blocking(fds)
        pid = passfds.spawn(argv, env, fds, watchdog="WATCHDOG_USEC" in env)
        log.info("started %s (pid %d) with LISTEN_FDS=%d (%s): %s", label, pid, len(fds),
                 self.sockets.describe(), " ".join(argv))
        return Child(label, pid, reaper, time.monotonic())

    def _restore_blocking(self, fds: Sequence[int]) -> None:
        """``O_NONBLOCK`` is one flag of each socket, shared by the launcher and every
        agent: one that set it (a Go or an asyncio server does) would hand it to the next
        generation, which may well ``accept()`` blocking. So, as systemd does before every
        exec, an agent gets the sockets as the launcher holds them (as bound, or as systemd
        passed them); not while another agent still serves them (an overlap), which may
        rely on what it set (the project's agent serves either way)."""
        if self._blocking is None:  # the first agent: nothing has touched them yet
            self._blocking = {fd: os.get_blocking(fd) for fd in fds}
        if self.serving():
            return
        for fd in fds:
            want = self._blocking.get(fd)
            if want is not None and os.get_blocking(fd) != want:
                log.info("the previous agent made listening socket fd %d %s; handing it on "
                         "%s, as the launcher holds it", fd,
                         "non-blocking" if want else "blocking",
                         "blocking" if want else "non-blocking")
                os.set_blocking(fd, want)

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self.sockets.close()
