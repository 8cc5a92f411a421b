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
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import httpx

from launcher.errors import SourceError, TransportError

SPEED_WINDOW_S = 30.0
ALARM_GRACE_S = 0.5


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

    def deadline(self) -> Alarm:
        """Raise this pace's error once its deadline passes, even inside a blocking read.

        The alarm is the backstop for what the checks between reads cannot see (a trickle of
        headers): it fires :data:`ALARM_GRACE_S` after the deadline, so that a stall or a slow
        body is still reported by those checks, in their own words."""
        remaining = self.deadline_s + ALARM_GRACE_S - (self.clock() - self.start)
        return Alarm(remaining, lambda: self.error(
            f"{self.what} exceeded its deadline of {self.deadline_s:g}s (no complete answer)"))


class Alarm:
    """Raise ``error()`` in the block once ``seconds`` of real time have passed.

    A real-time alarm (``SIGALRM``) interrupts a blocking read wherever it is, the status line
    and headers included. It works only in the main thread (where the worker runs); elsewhere
    it does nothing and the checks between reads remain.

    The handler raises in whatever Python code runs at that instant, and some code swallows
    exceptions (``logging`` does, while it writes a line): so once due, the alarm repeats every
    :attr:`REPEAT_S` until the block ends. A signal that lands in the alarm's own set-up or
    clean-up (``__enter__``, ``__exit__``) gives back the previous handler and timer there, so
    the block cannot be left with this handler installed. An alarm already armed around the
    block keeps its time: the earlier of the two fires first.
    """

    REPEAT_S = 0.25

    def __init__(self, seconds: float, error: Callable[[], BaseException]) -> None:
        self._seconds = max(seconds, 0.001)
        self._error = error
        self._armed = False

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._owner: FrameType | None = sys._getframe(1)
        self._entered = time.monotonic()
        self._outer = signal.setitimer(signal.ITIMER_REAL, 0)  # nothing can fire from here
        self._previous = signal.signal(signal.SIGALRM, self._expire)
        self._armed = True
        outer_delay = self._outer[0]
        first = min(self._seconds, outer_delay) if outer_delay > 0 else self._seconds
        signal.setitimer(signal.ITIMER_REAL, first, self.REPEAT_S)

    def __exit__(self, *exc_info: object) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if not self._armed:
            return
        self._armed = False
        self._owner = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        delay, interval = self._outer
        if delay > 0:
            left = delay - (time.monotonic() - self._entered)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)

    def _expire(self, signum: int, frame: FrameType | None) -> None:
        where = self._where(frame)
        if where != "body":  # in our own set-up or clean-up, or the block is gone
            self._give_back()
            if where == "enter":
                raise self._error()
            return
        outer_delay = self._outer[0]
        if 0 < outer_delay <= time.monotonic() - self._entered < self._seconds:
            self._give_back()  # the outer alarm is due first: it fires in a millisecond
            return
        raise self._error()

    def _where(self, frame: FrameType | None) -> str:
        """Where the signal landed: ``enter``, ``exit`` (this alarm's own methods), ``body``
        (below the frame that entered the block) or ``gone`` (that frame has returned)."""
        while frame is not None:
            if frame.f_locals.get("self") is self:
                if frame.f_code is Alarm.__enter__.__code__:
                    return "enter"
                if frame.f_code in _EXIT_CODES:
                    return "exit"
            if frame is self._owner:
                return "body"
            frame = frame.f_back
        return "gone"


_EXIT_CODES = (Alarm.__exit__.__code__, Alarm._give_back.__code__)
