"""Maintenance windows as pure functions of a Unix time (an injected clock): the syntax,
days, midnight, zones, clock changes, and the host that missed a whole window."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from launcher import settings
from launcher.errors import ConfigError
from launcher.window import is_open, next_open, next_window, parse, parse_all


def at(text: str, zone: str = "UTC") -> float:
    """A wall-clock time in ``zone`` as a Unix time."""
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


@pytest.mark.parametrize(("spec", "days", "start", "end"), [
    ("Mon-Fri 02:00-04:00 Europe/Berlin", {0, 1, 2, 3, 4}, 7200, 14400),
    ("Sat,Sun 22:00-02:00 UTC", {5, 6}, 79200, 7200),
    ("Fri-Mon 00:00-24:00 UTC", {4, 5, 6, 0}, 0, 86400),
    ("*  01:30:15-01:31 America/New_York", set(range(7)), 5415, 5460),
    ("mon-wed,Fri 01:00-02:00 UTC", {0, 1, 2, 4}, 3600, 7200),
])
def test_the_syntax(spec: str, days: set[int], start: int, end: int) -> None:
    w = parse(spec)
    assert (set(w.days), w.start_s, w.end_s) == (days, start, end)


@pytest.mark.parametrize(("spec", "words"), [
    ("Mon 02:00 UTC", "use 'DAYS HH:MM-HH:MM ZONE'"),
    ("Mon-Fri 02:00-04:00", "use 'DAYS"),
    ("Monday 02:00-04:00 UTC", "'Monday' is not a day"),
    ("Mon-Tue-Wed 02:00-04:00 UTC", "is not a day"),
    ("Mon 02:00-02:00 UTC", "the same time"),
    ("Mon 24:00-02:00 UTC", "cannot start at 24:00"),
    ("Mon 24:30-02:00 UTC", "past 24:00"),
    ("Mon 02:00-04:00 Mars/Olympus", "unknown time zone"),
    ("Mon 02:00-04:00 ../../etc/passwd", "unknown time zone"),
])
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        parse(spec)


def test_a_bad_window_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--window: window 'Mon 02:00 UTC'"):
        settings.load({"window": ["Mon 02:00 UTC"]}, environ={})
    loaded = settings.load({}, environ={"NGINX_MANAGER_WINDOW":
                                        "Sat 01:00-02:00 UTC; Sun 01:00-02:00 UTC"})
    assert loaded.windows == ("Sat 01:00-02:00 UTC", "Sun 01:00-02:00 UTC")


def test_open_and_next_in_a_named_zone() -> None:
    """Mon-Fri 02:00-04:00 in Berlin (UTC+1 in December): 2026-12-01 is a Tuesday."""
    ws = parse_all(["Mon-Fri 02:00-04:00 Europe/Berlin"])
    inside = at("2026-12-01T03:59:59", "Europe/Berlin")
    assert is_open(ws, inside) and next_open(ws, inside) == inside
    assert next_window(ws, inside) == at("2026-12-01T02:00", "Europe/Berlin")
    after = at("2026-12-01T04:00", "Europe/Berlin")
    assert not is_open(ws, after)
    assert next_open(ws, after) == at("2026-12-02T02:00", "Europe/Berlin")
    assert next_open(ws, after) == at("2026-12-02T01:00")  # the same instant in UTC
    friday = at("2026-12-04T05:00", "Europe/Berlin")
    assert next_open(ws, friday) == at("2026-12-07T02:00", "Europe/Berlin")  # Monday


def test_a_window_across_midnight_belongs_to_the_day_it_opens() -> None:
    ws = parse_all(["Fri 22:00-02:00 UTC"])
    assert is_open(ws, at("2026-12-04T23:00"))  # Friday night
    assert is_open(ws, at("2026-12-05T01:59"))  # Saturday, early
    assert not is_open(ws, at("2026-12-05T02:00"))
    assert not is_open(ws, at("2026-12-04T01:00"))  # Friday early: Thursday opened nothing
    assert next_open(ws, at("2026-12-05T03:00")) == at("2026-12-11T22:00")


def test_the_late_arriver_updates_in_the_next_window() -> None:
    """A host that was down for the whole window is not stuck: the next one counts."""
    ws = parse_all(["Sat,Sun 01:00-02:00 UTC"])
    back = at("2026-12-05T09:00")  # Saturday, after its window
    assert not is_open(ws, back)
    assert next_open(ws, back) == at("2026-12-06T01:00")
    assert next_open(ws, at("2026-12-06T09:00")) == at("2026-12-12T01:00")


def test_several_windows_are_a_union_and_none_means_always() -> None:
    ws = parse_all(["Mon 01:00-02:00 UTC", "* 12:00-12:30 Asia/Kolkata"])
    assert is_open(ws, at("2026-12-01T06:45"))  # 12:15 in Kolkata
    assert next_open(ws, at("2026-12-01T07:00")) == at("2026-12-02T06:30")
    assert is_open((), 0.0) and next_open((), 5.0) == 5.0 and next_window((), 5.0) is None


def test_clock_changes_move_a_window_but_never_lose_it() -> None:
    """New York springs forward at 02:00 on 2026-03-08 and falls back on 2026-11-01."""
    ws = parse_all(["* 02:30-03:30 America/New_York"])
    spring = next_open(ws, at("2026-03-08T00:00", "America/New_York"))
    assert spring == at("2026-03-08T07:30")  # 02:30 does not exist: the instant 03:30 EDT
    assert is_open(ws, at("2026-03-08T08:00"))  # 04:00 EDT is inside the moved window
    fall = next_open(ws, at("2026-11-01T00:00", "America/New_York"))
    assert fall == at("2026-11-01T07:30")  # 02:30 EST
    assert next_open(ws, at("2026-03-09T00:00", "America/New_York")) == \
        at("2026-03-09T02:30", "America/New_York")
