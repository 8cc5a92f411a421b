"""Prometheus metrics: counters kept in the journal, a text-format file written after every event.

``--metrics-file PATH`` follows node_exporter's textfile collector convention: the file is
written beside itself under a temporary name and renamed over, so a scrape never reads half
of it. It is written after every journal write (every event of the update cycle: a check, a
swap, a commit, a rollback, the agent's start and exit) and names only ``nginx_manager_*``.

Counters (checks, check errors by kind, updates, rollbacks by reason) live in the journal
under ``extra["counters"]``, so they survive launcher restarts and reboots; they are counted
in the same write that records the event, so a kill can neither lose nor double one.
Updates and rollbacks are counted from the transition between two journal writes
(:func:`counted`): a trial that ends committed is an update, a build newly marked bad is a
rollback (or a failed build kept when nothing was left to go back to). Hold and pin are read
from the journal when present. Standard library only: the resident writes the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from launcher.journal import PHASES, Journal, State, TolerantJournal
from launcher.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "nginx_manager_"
# Rollback reasons as a few stable label values (the journal keeps the full text).
REASONS = (
    ("rolled back by the operator", "operator"),
    ("agent stopped answering", "unhealthy"),
    ("agent never answered", "unhealthy"),
    ("container restarted", "container_restarts"),
    ("rolled back during its trial", "interrupted"),
    ("agent ", "exited"),
)
# Label values shown at 0 before they first happen, so that increase() sees the first one.
ROLLBACK_REASONS = ("operator", "unhealthy", "exited", "container_restarts", "interrupted",
                    "other")
ERROR_KINDS = ("transport", "https", "manifest", "expired", "rollback", "download", "sha256",
               "signature", "preflight", "host", "config", "worker", "other")
_LABEL = re.compile(r"[a-z0-9_]{1,32}")


def reason_label(reason: str) -> str:
    for start, label in REASONS:
        if reason.startswith(start):
            return label
    return "other"


def kind_label(result: dict[str, Any]) -> str:
    """The error kind of a failed check (``errors.py``'s words, ``worker`` for a crash)."""
    kind = result.get("error_kind")
    if not isinstance(kind, str):
        kind = str(result.get("error") or "").partition(":")[0]
    kind = kind.strip().lower()
    return kind if _LABEL.fullmatch(kind) else "other"


def counters(state: State) -> dict[str, Any]:
    raw = state.extra.get("counters")
    c = dict(raw) if isinstance(raw, dict) else {}
    for name in ("checks", "updates"):
        c[name] = c[name] if _count(c.get(name)) else 0
    for name in ("check_errors", "rollbacks"):
        table = c.get(name)
        c[name] = {k: v for k, v in table.items() if isinstance(k, str) and _count(v)} \
            if isinstance(table, dict) else {}
    return c


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _with(state: State, c: dict[str, Any]) -> State:
    return dataclasses.replace(state, extra={**state.extra, "counters": c})


def count_check(state: State, result: dict[str, Any], wall: float) -> State:
    """One finished update check: counted, and its time kept when it succeeded."""
    c = counters(state)
    c["checks"] += 1
    if result.get("outcome") == "error":
        kind = kind_label(result)
        c["check_errors"] = {**c["check_errors"], kind: c["check_errors"].get(kind, 0) + 1}
    else:
        c["last_success_s"] = wall
    return _with(state, c)


def counted(old: State | None, new: State) -> State:
    """``new`` with the updates and rollbacks that happened since ``old`` counted."""
    if old is None:
        return new
    c = counters(new)
    changed = False
    if old.phase == "trial" and new.phase == "committed" and new.current == old.current \
            and new.current is not None and not new.is_bad(new.current):
        c["updates"] += 1
        changed = True
    before = {(b.version, b.sha256) for b in old.bad}
    for b in new.bad:
        if (b.version, b.sha256) not in before:
            label = reason_label(b.reason)
            c["rollbacks"] = {**c["rollbacks"], label: c["rollbacks"].get(label, 0) + 1}
            changed = True
    return _with(new, c) if changed else new


# ---- the text format -----------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} {kind}"]
        self.lines += [f"{PREFIX}{name}{_labels(lab)} {_number(v)}" for lab, v in samples]

    def one(self, name: str, kind: str, help_: str, value: float) -> None:
        self.family(name, kind, help_, [({}, value)])


def _hold(state: State) -> dict[str, Any] | None:
    """The hold the journal records (a field of its own, or under ``extra``), if any."""
    value = getattr(state, "hold", None) or state.extra.get("hold")
    return value if isinstance(value, dict) else {} if value else None


def _pin(state: State) -> str | None:
    value = getattr(state, "pin", None) or state.extra.get("pin")
    if isinstance(value, dict):
        value = value.get("version")
    return value if isinstance(value, str) and value else None


def _table(counts: dict[str, int], label: str,
           known: tuple[str, ...]) -> list[tuple[dict[str, str], float]]:
    values = {**dict.fromkeys(known, 0), **counts}
    return [({label: k}, v) for k, v in sorted(values.items())]


def render(state: State, s: Settings, now: float) -> str:
    """The whole file, for the state as journaled and the settings in force."""
    c = counters(state)
    t = _Text()
    version = state.current.version if state.current else ""
    t.family("agent_info", "gauge", "The agent build installed (1), by version.",
             [({"version": version, "sha256": state.current.sha256 if state.current else ""},
               1)] if state.current else [])
    t.family("phase", "gauge", "The update cycle's phase (1 for the phase it is in).",
             [({"phase": p}, int(p == state.phase)) for p in PHASES])
    child = state.child
    t.one("agent_up", "gauge", "1 while the agent process runs.",
          int(child is not None and child.state == "running"))
    t.one("updates_total", "counter", "Updates committed after their health window.",
          c["updates"])
    t.family("rollbacks_total", "counter", "Builds rolled back (or kept, marked bad), by "
             "reason.", _table(c["rollbacks"], "reason", ROLLBACK_REASONS))
    t.one("checks_total", "counter", "Update checks finished, failed ones included.",
          c["checks"])
    t.family("check_errors_total", "counter", "Failed update checks, by error kind.",
             _table(c["check_errors"], "kind", ERROR_KINDS))
    t.one("consecutive_check_failures", "gauge", "Update checks failed in a row.",
          state.consecutive_failures)
    last = c.get("last_success_s")
    if isinstance(last, int | float) and not isinstance(last, bool):
        t.one("last_successful_check_timestamp_seconds", "gauge",
              "When an update check last succeeded (Unix time).", float(last))
    t.one("bad_builds", "gauge", "Builds marked bad (never installed again until unblocked).",
          len(state.bad))
    t.family("bad_build_info", "gauge", "Each build marked bad here (1), by version and "
             "reason: counted across hosts, a version rolled back fleet-wide.",
             [({"version": b.version, "sha256": b.sha256, "reason": reason_label(b.reason)}, 1)
              for b in state.bad])
    hold = _hold(state)
    t.one("hold", "gauge", "1 while updates are held on this host.", int(hold is not None))
    pin = _pin(state)
    t.one("pinned", "gauge", "1 while updates are pinned to a version.", int(pin is not None))
    t.family("pin", "gauge", "The version updates are pinned to (1; absent when unpinned).",
             [({"version": pin}, 1)] if pin else [])
    channel = getattr(state, "channel", None) or state.extra.get("channel") or s.channel
    t.family("channel_info", "gauge", "The release channel followed.",
             [({"channel": str(channel)}, 1)])
    trial = state.trial if state.phase == "trial" else None
    t.one("trial_run_seconds", "gauge", "Seconds the build on trial has run (0: no trial).",
          float(trial.run_time_s) if trial else 0.0)
    t.one("trial_window_seconds", "gauge", "Seconds a new build must stay up to be committed.",
          float(s.health_window_s))
    t.one("trial_progress_ratio", "gauge", "Share of the health window done (0: no trial).",
          min(1.0, trial.run_time_s / s.health_window_s) if trial else 0.0)
    t.one("metrics_written_timestamp_seconds", "gauge", "When this file was written.",
          float(now))
    return "\n".join(t.lines) + "\n"


def write(path: Path, text: str) -> None:
    """``text`` at ``path`` by a rename from a temporary file in the same directory. The
    temporary name is random and created exclusively: a link planted in a shared directory
    is never followed."""
    name = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    # 0644: the collector usually runs as another user; nothing in the file is secret.
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)  # whatever the umask
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


# ---- the journals that count --------------------------------------------------------


class CountingJournal(Journal):
    """A journal whose writes count updates and rollbacks (an offline ``rollback``)."""

    last: State | None = None

    def load(self) -> State | None:
        self.last = super().load()
        return self.last

    def save(self, state: State) -> State:
        self.last = super().save(counted(self.last, state))
        return self.last


class MeteredJournal(TolerantJournal):
    """The resident's journal: counts, and rewrites the metrics file after every write. A
    metrics file that cannot be written is logged once and never stops anything."""

    def __init__(self, state_dir: Path, settings: Callable[[], Settings],
                 wall: Callable[[], float]) -> None:
        super().__init__(state_dir)
        self.settings = settings
        self.wall = wall
        self.last: State | None = None
        self.metrics_ok = True

    def load(self) -> State | None:
        self.last = super().load()
        s = self.settings()
        if s.metrics_file is not None:  # what a kill inside a write left
            for left in s.metrics_file.parent.glob(f".{s.metrics_file.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    left.unlink()
        return self.last

    def save_strict(self, state: State) -> State:
        saved = super().save_strict(counted(self.last, state))
        self.last = saved
        self.export(saved)
        return saved

    def export(self, state: State) -> None:
        s = self.settings()
        if s.metrics_file is None:
            return
        try:
            write(s.metrics_file, render(state, s, self.wall()))
        except OSError as exc:
            if self.metrics_ok:
                log.warning("cannot write the metrics file %s (%s); the launcher carries on",
                            s.metrics_file, exc.strerror or exc)
            self.metrics_ok = False
            return
        if not self.metrics_ok:
            log.info("the metrics file %s is written again", s.metrics_file)
        self.metrics_ok = True


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Parse the file back (name, labels, value): for ``status`` and tests."""
    pattern = re.compile(r'(\w+)(?:\{(.*)\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = pattern.match(line)
        if m is None:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        yield m.group(1), labels, float(m.group(3))
