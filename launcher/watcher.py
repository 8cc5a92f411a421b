"""The file watcher: a ``launcher.watch`` helper for a ``file://`` manifest and the config file.

It owns the helper process and its restart timer (``watch.restart``). A watcher that
exits is restarted with a growing delay (5 s, doubling, at most ``MAX_RESTART_S``), so a
watched directory that is missing costs a retry every few minutes, not a process every
5 s; a watcher that ran for ``STABLE_S`` starts the delay over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from launcher import isolated
from launcher.child import PipedChild, spawn_piped
from launcher.loop import Loop
from launcher.reaper import decode_status

log = logging.getLogger(__name__)

GRACE_S = 2.0
FIRST_RESTART_S = 5.0
MAX_RESTART_S = 300.0
STABLE_S = 60.0
RESTART = "watch.restart"


class Watcher:
    def __init__(self, loop: Loop, env: Mapping[str, str], parent: int,
                 on_change: Callable[[str], None]) -> None:
        self.loop = loop
        self.env = env
        self.parent = parent
        self.on_change = on_change
        self.paths: list[str] = []
        self.proc: PipedChild | None = None
        self.failures = 0
        self.stopping = False

    def pids(self) -> set[int]:
        return {self.proc.proc.pid} if self.proc is not None else set()

    def watch(self, paths: list[str]) -> None:
        """Watch exactly ``paths`` (none: no helper runs)."""
        if paths == self.paths and (self.proc is not None or self.loop.timers.pending(RESTART)):
            return
        self.stop()
        self.stopping = False
        self.paths = paths
        self.failures = 0
        self._start()

    def _start(self) -> None:
        if not self.paths or self.stopping:
            return
        argv = isolated.argv("launcher.watch", *self.paths, parent=self.parent)
        try:
            self.proc = spawn_piped("file watcher", argv, isolated.environ(self.env),
                                    self.loop.reaper, self.loop, 0, on_data=self._lines,
                                    shown=isolated.shown("launcher.watch", *self.paths))
        except OSError as exc:
            log.warning("cannot start the file watcher (%s); changes are seen at the next "
                        "poll", exc)
            self._retry_later()

    def _lines(self) -> None:
        assert self.proc is not None
        *lines, rest = bytes(self.proc.buf).split(b"\n")
        self.proc.buf = bytearray(rest)
        for line in lines:
            self.on_change(line.decode(errors="replace").strip())

    def poll(self) -> None:
        if self.proc is None or (status := self.proc.proc.poll()) is None:
            return
        ran_s = time.monotonic() - self.proc.proc.started
        self.proc.close()
        self.proc = None
        if self.stopping:
            return
        if ran_s >= STABLE_S:
            self.failures = 0
        delay = self._retry_later()
        log.warning("file watcher %s; restarting it in %.0fs", decode_status(status)[1], delay)

    def _retry_later(self) -> float:
        delay = min(FIRST_RESTART_S * 2.0 ** min(self.failures, 16), MAX_RESTART_S)
        self.failures += 1
        self.loop.timers.set(RESTART, delay, self._start)
        return delay

    def stop(self) -> None:
        self.stopping = True
        self.loop.timers.cancel(RESTART)
        if self.proc is not None:
            self.proc.proc.stop(GRACE_S)
            self.proc.close()
            self.proc = None
