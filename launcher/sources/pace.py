"""Limits on one transfer in time: an overall deadline and a minimum average speed.

httpx timeouts bound each read, not a transfer: a server trickling a byte a second never
times out on its own. :class:`Pace` is checked between reads (the manifest, its signature,
the GitHub API answer, ``SHA256SUMS`` and, through ``launcher.download``, the binary), and
caps each read's timeout at the deadline and at the speed window, so a server that sends
nothing at all is caught within one of them too. Between reads of the *body* is not enough:
httpx reads the status line and headers on its own, one read timeout per byte if the server
trickles them, so :meth:`Pace.deadline` also arms a real-time alarm (``SIGALRM``) around the
whole request, which ends a blocking read at the deadline whatever httpx is doing.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import httpx

from launcher.errors import SourceError, TransportError

SPEED_WINDOW_S = 30.0


class SpeedWindow:
    """Average transfer speed over the last ``window_s`` seconds, from (time, total) samples."""

    def __init__(self, window_s: float, start: float) -> None:
        self._window_s = window_s
        self._start = start
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(start, 0)])

    def record(self, now: float, total_bytes: int) -> None:
        self._samples.append((now, total_bytes))
        horizon = now - self._window_s
        # Keep one sample at or before the horizon: the window's starting point.
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.popleft()

    def speed(self, now: float, total_bytes: int) -> float | None:
        """Bytes per second over the last window, or None before a full window has passed."""
        if now - self._start < self._window_s:
            return None
        _, at_horizon = self._samples[0]
        return (total_bytes - at_horizon) / self._window_s


class Pace:
    """One transfer's deadline and minimum speed; :meth:`check` raises ``error`` past them."""

    def __init__(
        self,
        what: str,
        *,
        deadline_s: float,
        min_speed_bps: float,
        speed_window_s: float = SPEED_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        error: type[SourceError] = TransportError,
    ) -> None:
        self.what = what
        self.deadline_s = deadline_s
        self.min_speed_bps = min_speed_bps
        self.speed_window_s = speed_window_s
        self.clock = clock
        self.error = error
        self.start = clock()
        self.window = SpeedWindow(speed_window_s, self.start)

    def timeout(self, configured: httpx.Timeout) -> httpx.Timeout:
        """``configured`` with every part capped at the deadline and the speed window."""
        caps = [self.deadline_s]
        if self.min_speed_bps > 0:
            caps.append(self.speed_window_s)

        def capped(value: float | None) -> float:
            return min([*caps, value]) if value is not None else min(caps)

        return httpx.Timeout(connect=capped(configured.connect), read=capped(configured.read),
                             write=capped(configured.write), pool=capped(configured.pool))

    def check(self, received: int) -> None:
        now = self.clock()
        self.window.record(now, received)
        if now - self.start >= self.deadline_s:
            raise self.error(f"{self.what} exceeded its deadline of {self.deadline_s:g}s "
                             f"({received} bytes received)")
        speed = self.window.speed(now, received)
        if speed is not None and speed < self.min_speed_bps:
            raise self.error(f"{self.what} too slow: {speed:.0f} B/s over the last "
                             f"{self.speed_window_s:g}s (minimum {self.min_speed_bps:g} B/s)")

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        """Raise this pace's error once its deadline passes, even inside a blocking read."""
        remaining = self.deadline_s - (self.clock() - self.start)
        return alarm(remaining, lambda: self.error(
            f"{self.what} exceeded its deadline of {self.deadline_s:g}s (no complete answer)"))


@contextlib.contextmanager
def alarm(seconds: float, error: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``error()`` in the block once ``seconds`` of real time have passed.

    A real-time alarm (``SIGALRM``) interrupts a blocking read wherever it is, the status line
    and headers included. It works only in the main thread (where the worker runs); elsewhere
    this is a no-op and the checks between reads remain. An alarm already armed around this
    block is re-armed with what is left of it when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise error()

    entered = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        try:  # an alarm at this very instant raises here, and still restores below
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:
                left = outer - (time.monotonic() - entered)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
