"""Maintenance windows: when a verified build may be swapped in (``--window SPEC``).

A spec is ``DAYS HH:MM-HH:MM ZONE``: DAYS is ``Mon``..``Sun``, a range (``Mon-Fri``, also
across the week's end: ``Fri-Mon``), a list (``Sat,Sun``, ``Mon-Wed,Fri``) or ``*``; the times
are wall-clock times in ZONE (an IANA name such as ``Europe/Berlin``, or ``UTC``), seconds
allowed (``HH:MM:SS``); the end may be ``24:00``, and an end at or before the start means the
window crosses midnight (``Fri 22:00-02:00`` opens on Friday night and closes on Saturday).
DAYS names the day the window opens. Several specs may be given: the union counts.

On the day a clock change skips a time, a start or end at the skipped time is the instant
one offset later (zoneinfo's ``fold=0``: 02:30 that does not exist is 03:30 of the new
offset); a window the change would shrink to nothing keeps its length, so it is never lost,
only moved by the shift.

Pure functions over Unix times: no clock of their own, so every rule is tested by calling it.
Standard library only (``zoneinfo``, imported once a window is configured): the resident
uses this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_TIME = r"([01]\d|2[0-4]):([0-5]\d)(?::([0-5]\d))?"
_SPEC = re.compile(rf"(\S+)\s+{_TIME}-{_TIME}\s+(\S+)")
_DAY_SECONDS = 86400


@dataclass(frozen=True)
class Window:
    spec: str
    days: frozenset[int]  # 0 = Monday
    start_s: int  # seconds after local midnight
    end_s: int  # seconds after local midnight; <= start_s: the next day
    zone: str

    def tz(self) -> tzinfo:
        """The zone; ValueError when there is no such zone (or it cannot be read)."""
        if self.zone == "UTC":
            return UTC
        from zoneinfo import ZoneInfo  # only with a window: the idle resident does without

        try:
            return ZoneInfo(self.zone)
        except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {self.zone!r}") from exc


def parse(spec: str) -> Window:
    """One spec; ValueError says what is wrong with it."""
    text = " ".join(spec.split())
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"window {spec!r}: use 'DAYS HH:MM-HH:MM ZONE', e.g. "
                         "'Mon-Fri 02:00-04:00 Europe/Berlin' or '* 22:00-02:00 UTC'")
    days_text, zone = match.group(1), match.group(8)
    start = _seconds(match.group(2, 3, 4), spec)
    end = _seconds(match.group(5, 6, 7), spec)
    if start == _DAY_SECONDS:
        raise ValueError(f"window {spec!r}: a window cannot start at 24:00")
    if start == end:
        raise ValueError(f"window {spec!r}: start and end are the same time (for a whole "
                         "day write 00:00-24:00)")
    window = Window(text, _days(days_text, spec), start, end, zone)
    try:
        window.tz()
    except ValueError as exc:
        raise ValueError(f"window {spec!r}: unknown time zone {zone!r} (an IANA name such "
                         "as Europe/Berlin, or UTC)") from exc
    return window


def _seconds(parts: tuple[str | None, ...], spec: str) -> int:
    hours, minutes, seconds = (int(p or 0) for p in parts)
    value = hours * 3600 + minutes * 60 + seconds
    if value > _DAY_SECONDS:
        raise ValueError(f"window {spec!r}: {hours:02d}:{minutes:02d} is past 24:00")
    return value


def _days(text: str, spec: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    found: set[int] = set()
    for item in text.split(","):
        ends = item.split("-")
        if len(ends) > 2 or not all(e.capitalize() in DAYS for e in ends):
            raise ValueError(f"window {spec!r}: {item!r} is not a day, a range of days "
                             "(Mon-Fri) or '*'; days are " + ", ".join(DAYS))
        first, last = (DAYS.index(e.capitalize()) for e in (ends[0], ends[-1]))
        found.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(found)


def spans(windows: tuple[Window, ...], now: float,
          days_ahead: int = 8) -> list[tuple[float, float]]:
    """Every (start, end) in Unix time that overlaps ``[now - 1 day, now + days_ahead]``."""
    found = []
    for w in windows:
        tz = w.tz()
        today = datetime.fromtimestamp(now, tz).date()
        for offset in range(-2, days_ahead + 1):
            day = today + timedelta(days=offset)
            if day.weekday() not in w.days:
                continue
            start = _at(day, w.start_s, tz)
            end_day = day if w.end_s > w.start_s else day + timedelta(days=1)
            end = _at(end_day, w.end_s, tz)
            if end <= start:  # a clock change swallowed it: keep its length on the clock
                end = start + (w.end_s - w.start_s) % _DAY_SECONDS
            found.append((start, end))
    return sorted(found)


def _at(day: date, seconds: int, tz: tzinfo) -> float:
    if seconds == _DAY_SECONDS:
        return datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()
    clock = time(seconds // 3600, seconds // 60 % 60, seconds % 60)
    return datetime.combine(day, clock, tz).timestamp()


def is_open(windows: tuple[Window, ...], now: float) -> bool:
    """True with no windows (swaps at any time) or inside one of them."""
    return not windows or any(start <= now < end for start, end in spans(windows, now))


def next_open(windows: tuple[Window, ...], now: float) -> float | None:
    """When a swap may happen: ``now`` inside a window (or with none), else the next start.

    None only if no window opens within the coming week (impossible for a valid spec)."""
    if is_open(windows, now):
        return now
    return min((start for start, _ in spans(windows, now) if start > now), default=None)


def next_window(windows: tuple[Window, ...], now: float) -> float | None:
    """For ``status``: the start of the window open now, else of the next; None without
    windows."""
    if not windows:
        return None
    for start, end in spans(windows, now):
        if start <= now < end or start > now:
            return start
    return None


def parse_all(specs: tuple[str, ...] | list[str]) -> tuple[Window, ...]:
    return tuple(parse(s) for s in specs)
