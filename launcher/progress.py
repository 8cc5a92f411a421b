"""A download reports itself: a log line every ~10 s or 10%, and a file ``status`` reads.

The worker owns the transfer; the resident and ``status`` never talk to it. So the channel is
a small JSON file in the state directory, ``transfer.json``, that the worker replaces
atomically (temp file + ``os.replace``) at most once a second and removes when the transfer
ends, however it ends. It names the worker's pid, so a file left by a killed worker is
recognised as stale (:func:`read_transfer` returns None for it). Standard library only:
``status`` imports :func:`read_transfer`.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("launcher.download")

TRANSFER_FILE = "transfer.json"
LOG_EVERY_S = 10.0
LOG_FRACTION = 0.10
FILE_EVERY_S = 1.0
QUIET_S = 2.0  # no 10% lines before a transfer has run this long
STALE_S = 120.0  # a transfer file not rewritten for this long is not in flight


class Progress:
    """Pacing of the progress lines and the transfer file for one download.

    ``update(received)`` is called after every chunk; it logs when ``LOG_EVERY_S`` has passed
    since the last line or the transfer crossed the next ``LOG_FRACTION`` of ``total`` (once it
    has run ``QUIET_S``: a quick download is not narrated), and
    rewrites the transfer file at most every ``FILE_EVERY_S``. Rate and time left count the
    bytes of this run only (a resumed transfer's earlier bytes cost no time now).
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        *,
        file: Path | None = None,
        extra: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        log_every_s: float = LOG_EVERY_S,
        log_fraction: float = LOG_FRACTION,
    ) -> None:
        self.what = what
        self.total = total
        self.file = file
        self.extra = dict(extra or {})
        self.clock = clock
        self.wall = wall
        self.log_every_s = log_every_s
        self.log_fraction = log_fraction
        self.start = clock()
        self.started_wall = wall()
        self.base = 0  # bytes already there when this run began (a resumed transfer)
        self.received = 0
        self.resumed_from = 0
        self._last_log = self.start
        self._next_fraction = log_fraction
        self._last_file = float("-inf")
        self.lines = 0

    def begin(self, received: int) -> None:
        """A request starts with ``received`` bytes already in the file (0: from scratch)."""
        if received and not self.resumed_from:
            self.resumed_from = received
        self.base = received
        self.start = self.clock()
        self.received = received
        if self.total:
            self._next_fraction = (received // max(1, int(self.total * self.log_fraction))
                                   + 1) * self.log_fraction
        self._write(self.start, force=True)

    def update(self, received: int) -> None:
        self.received = received
        now = self.clock()
        due = now - self._last_log >= self.log_every_s
        if self.total and received / self.total >= self._next_fraction:
            # A download done within QUIET_S says nothing but its "downloaded" line.
            due = due or now - self.start >= QUIET_S
            while self._next_fraction <= received / self.total:
                self._next_fraction += self.log_fraction
        if due:
            self._last_log = now
            self.lines += 1
            log.info("%s", self.describe(now))
        self._write(now)

    def rate(self, now: float) -> float | None:
        elapsed = now - self.start
        return (self.received - self.base) / elapsed if elapsed > 0 else None

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if not self.total or not rate:
            return None
        return max(0.0, (self.total - self.received) / rate)

    def describe(self, now: float) -> str:
        rate, eta = self.rate(now), self.eta(now)
        of = f" of {_mib(self.total)}" if self.total else ""
        pct = f" ({100 * self.received / self.total:.0f}%)" if self.total else ""
        speed = f", {_mib(int(rate))}/s" if rate is not None else ""
        left = f", about {_duration(eta)} left" if eta is not None else ""
        return f"downloading {self.what}: {_mib(self.received)}{of}{pct}{speed}{left}"

    def snapshot(self, now: float) -> dict[str, Any]:
        rate, eta = self.rate(now), self.eta(now)
        return {
            **self.extra,
            "url": self.what, "pid": os.getpid(), "received": self.received,
            "total": self.total, "resumed_from": self.resumed_from or None,
            "rate_bps": round(rate) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "started": _iso(self.started_wall), "updated": _iso(self.wall()),
        }

    def _write(self, now: float, *, force: bool = False) -> None:
        if self.file is None or (not force and now - self._last_file < FILE_EVERY_S):
            return
        self._last_file = now
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot(now)))
            os.replace(tmp, self.file)
        except OSError as exc:  # a status aid: never worth failing the download for
            log.debug("cannot write %s: %s", self.file, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def close(self) -> None:
        """The transfer ended (done, failed or cancelled): the file goes."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()


def read_transfer(state_dir: Path) -> dict[str, Any] | None:
    """The transfer in flight, or None (no file, unreadable, its worker is gone, or it was
    last rewritten more than ``STALE_S`` ago: a killed worker's, its pid since reused)."""
    try:
        data = json.loads((state_dir / TRANSFER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    try:
        updated = calendar.timegm(time.strptime(str(data.get("updated")), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    if time.time() - updated > STALE_S:  # left by a worker long gone
        return None
    try:
        os.kill(data["pid"], 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's (status run by someone else)
        pass
    return data


def describe_transfer(data: dict[str, Any]) -> str:
    """One line for ``status``."""
    received = int(data.get("received") or 0)
    total = data.get("total")
    line = f"{data.get('version') or '?'}: {_mib(received)}"
    if isinstance(total, int) and total > 0:
        line += f" of {_mib(total)} ({100 * received / total:.0f}%)"
    if isinstance(data.get("rate_bps"), int):
        line += f", {_mib(data['rate_bps'])}/s"
    if isinstance(data.get("eta_s"), int | float):
        line += f", about {_duration(float(data['eta_s']))} left"
    if data.get("resumed_from"):
        line += f", resumed at {_mib(int(data['resumed_from']))}"
    if data.get("kind") == "delta":
        line += " (delta)"
    return line


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
