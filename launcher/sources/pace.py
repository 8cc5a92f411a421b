"""Limits on one transfer in time: an overall deadline and a minimum average speed.

httpx timeouts bound each read, not a transfer: a server trickling a byte a second never
times out on its own. :class:`Pace` is checked between reads (the manifest, its signature,
the GitHub API answer, ``SHA256SUMS`` and, through ``launcher.download``, the binary), and
caps each read's timeout at the deadline and at the speed window, so a server that sends
nothing at all is caught within one of them too.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

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
