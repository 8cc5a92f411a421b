"""The resident's loop: one ``select``, one timer set, dispatch. Nothing else lives here.

A callback that raises is logged and the loop goes on (the agent keeps running); only many
such errors in a minute end the launcher, so that its supervisor restarts it.

Each timer has a name chosen by the part that owns it (``agent.restart``, ``trial.tick``,
``check.next`` ...); only its owner sets or cancels it, and setting a name again replaces
the earlier deadline, so no owner can ever have two of the same pending.

One turn: wait for a readable fd or the next deadline (not at all when a signal or an
exit status is already queued, so nothing that arrived while the resident was busy waits
for the next event), run the fd callbacks, reap, hand each signal to ``on_signal``, let
every owner of a process look at its exits (``pollers``), drop the statuses of orphans,
then run the timers that are due.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import selectors
import time
from collections.abc import Callable

from launcher.reaper import Reaper

log = logging.getLogger(__name__)

Callback = Callable[[], None]
MAX_WAIT_S = 86400.0
MAX_ERRORS = 10  # internal errors within ERROR_WINDOW_S before the launcher gives up
ERROR_WINDOW_S = 60.0


class Timers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._due: dict[str, tuple[float, Callback]] = {}

    def set(self, name: str, delay_s: float, fn: Callback) -> None:
        self._due[name] = (self.clock() + max(0.0, delay_s), fn)

    def cancel(self, name: str) -> None:
        self._due.pop(name, None)

    def pending(self, name: str) -> bool:
        return name in self._due

    def remaining(self, name: str) -> float | None:
        due = self._due.get(name)
        return None if due is None else max(0.0, due[0] - self.clock())

    def timeout(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(at for at, _ in self._due.values()) - self.clock())

    def run_due(self, run: Callable[[Callback], None] = lambda fn: fn()) -> None:
        """Run every timer whose deadline has passed, earliest first (through ``run``). A
        callback may set or cancel timers: one it cancels does not run, one it sets runs at
        a later turn."""
        now = self.clock()
        for name, entry in sorted(self._due.items(), key=lambda kv: kv[1][0]):
            if entry[0] > now:
                break
            if self._due.get(name) is entry:
                del self._due[name]
                run(entry[1])


class Loop:
    def __init__(self, reaper: Reaper, clock: Callable[[], float] = time.monotonic) -> None:
        self.reaper = reaper
        self.timers = Timers(clock)
        self.sel = selectors.DefaultSelector()
        self.on_signal: Callable[[int], None] = lambda signum: None
        self.pollers: list[Callback] = []
        self.owned: Callable[[], set[int]] = set
        self.done = False
        self._errors: list[float] = []
        self.sel.register(reaper.wakeup_fd, selectors.EVENT_READ, reaper.drain_wakeup)

    def add_reader(self, fd: int, fn: Callback) -> None:
        self.sel.register(fd, selectors.EVENT_READ, fn)

    def remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def turn(self) -> None:
        timeout = 0.0 if self.reaper.pending() else self.timers.timeout()
        if timeout is not None:
            timeout = min(timeout, MAX_WAIT_S)  # epoll takes at most INT_MAX milliseconds
        for key, _ in self.sel.select(timeout):
            self.guarded(key.data)
        self.dispatch()

    def dispatch(self) -> None:
        """Everything of a turn after the wait."""
        self.reaper.reap()
        while self.reaper.signals and not self.done:
            self.guarded(functools.partial(self.on_signal, self.reaper.signals.popleft()))
        if self.done:
            return
        for poll in self.pollers:
            self.guarded(poll)
        self.reaper.forget_others(self.owned())
        self.timers.run_due(self.guarded)

    def guarded(self, fn: Callback) -> None:
        """Run one callback; a bug in it is logged, not fatal: the agent keeps running. Many
        in a short time (a fault that repeats every turn) end the launcher after all, so
        that its supervisor restarts it rather than it spinning."""
        try:
            fn()
        except Exception:
            now = time.monotonic()
            self._errors = [t for t in self._errors if now - t < ERROR_WINDOW_S] + [now]
            log.exception("internal error in the launcher's loop (%d in %.0fs); carrying on",
                          len(self._errors), ERROR_WINDOW_S)
            if len(self._errors) > MAX_ERRORS:
                raise

    def close(self) -> None:
        self.sel.close()
