"""The journal: ``state.json``, the launcher's memory across kills and reboots.

Every transition of the update cycle is written here before the files it describes
change, atomically (temp file, fsync, replace, fsync of the directory), so a launcher
killed at any instant comes back to a state it can finish or undo. A journal that
cannot be parsed is set aside as ``state.json.corrupt-<time>`` and the one before the
last write (``state.json.prev``) is read instead; the files on disk are then the truth.

How a restarted launcher resumes each phase (``install.recover`` and the supervisor):

    phase         files show               resume as
    ------------  -----------------------  ------------------------------------------------
    empty         no bin/agent             install the source's release
    committed     bin/agent is current     run it; checks on the first-poll rule
    swapping      bin/agent is staged      trial of the staged build, from 0 s
                  bin/agent is current     swap abandoned; the next check fetches it again
    trial         bin/agent is current     resume the trial at its run time, with a fresh
                                           start-up grace; an agent that outlived the
                                           launcher is stopped first, not charged
                  bin/agent is previous    the rollback happened: previous is committed,
                                           current is marked bad
    rolling_back  agent.old is the target  rename it back, then as below
                  bin/agent is the target  committed on it; the bad mark kept
                  target gone              committed on what is there
    any           bin/agent unknown        committed as version "unknown" (``--version``)
    any           bin/agent missing        agent.old put back, else empty

A bad mark is written before any file moves. When that write failed (disk full,
read-only) or was lost with a torn journal, the trial row above re-derives it.
``.state.json.*.tmp`` files left by a kill inside a write are removed at start.
Operator controls (hold, pin, install requests, a build waiting for a maintenance window
as ``bin/agent.next``) live under ``extra``; ``launcher.controls`` names the fields.
Filesystems without hard links (vfat, many FUSE mounts) get a copy, fsync and rename
where a link would be used, with the same guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.files import link_or_copy, read_nofollow, write_atomic

log = logging.getLogger(__name__)

SCHEMA = 1
JOURNAL_ERRORS = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)
PHASES = ("empty", "committed", "swapping", "trial", "rolling_back")


@dataclass(frozen=True)
class Build:
    version: str
    sha256: str

    def label(self) -> str:
        return f"{self.version} (sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class BadBuild:
    version: str
    sha256: str
    reason: str
    at: str


@dataclass(frozen=True)
class Trial:
    """An update on probation; ``run_time_s`` is the new child's own accumulated up time."""

    build: Build
    started_at: str
    run_time_s: float = 0.0
    healthy_seen: bool = False
    container_restarts: int = 0


@dataclass(frozen=True)
class Staged:
    build: Build
    file: str  # name inside bin/


@dataclass(frozen=True)
class ChildInfo:
    pid: int | None
    version: str | None
    state: str  # starting | running | backoff | stopped
    since: str
    create_time: float | None = None  # the running agent's start (psutil), with ``pid``


@dataclass(frozen=True)
class State:
    host_id: str
    phase: str = "empty"
    current: Build | None = None
    previous: Build | None = None
    staged: Staged | None = None
    trial: Trial | None = None
    rollback_to: Build | None = None
    bad: tuple[BadBuild, ...] = ()
    etag: str | None = None
    last_modified: str | None = None
    consecutive_failures: int = 0
    last_check_at: str | None = None
    last_error: str | None = None
    next_check_at: str | None = None
    child: ChildInfo | None = None
    launcher_pid: int | None = None
    updated_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def is_bad(self, build: Build) -> bool:
        return any(b.version == build.version and b.sha256 == build.sha256 for b in self.bad)

    def with_bad(self, build: Build, reason: str, at: str) -> State:
        if self.is_bad(build):
            return self
        entry = BadBuild(build.version, build.sha256, reason, at)
        return dataclasses.replace(self, bad=(*self.bad, entry))

    def without_bad(self, version: str) -> State:
        return dataclasses.replace(self, bad=tuple(b for b in self.bad if b.version != version))


def new_state() -> State:
    import uuid  # once per state dir's life

    return State(host_id=str(uuid.uuid4()))


def utc_iso(ts: float | None = None) -> str:
    """RFC 3339 UTC with second precision, e.g. ``2026-11-28T00:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def to_json(state: State) -> str:
    return json.dumps({"schema": SCHEMA, **dataclasses.asdict(state)}, indent=2, sort_keys=True)


def _build(d: Any) -> Build | None:
    if d is None:
        return None
    return Build(version=str(d["version"]), sha256=str(d["sha256"]))


def from_dict(d: dict[str, Any]) -> State:
    """Rebuild a State; raises KeyError/TypeError/ValueError on a malformed journal."""
    if d.get("schema") != SCHEMA:
        raise ValueError(f"unknown journal schema {d.get('schema')!r}")
    if d.get("phase") not in PHASES:
        raise ValueError(f"unknown phase {d.get('phase')!r}")
    trial = d.get("trial")
    staged = d.get("staged")
    child = d.get("child")
    phase = d["phase"]
    # A phase whose record is missing cannot be resumed: the files decide (install.recover).
    record = {"trial": trial, "swapping": staged, "rolling_back": d.get("rollback_to")}
    if phase in record and not record[phase]:
        phase = "committed"
    build = _build(trial["build"]) if trial else None
    sbuild = _build(staged["build"]) if staged else None
    return State(
        host_id=str(d["host_id"]),
        phase=phase,
        current=_build(d.get("current")),
        previous=_build(d.get("previous")),
        staged=Staged(sbuild, str(staged["file"])) if staged and sbuild else None,
        trial=Trial(
            build=build,
            started_at=str(trial["started_at"]),
            run_time_s=float(trial.get("run_time_s", 0.0)),
            healthy_seen=bool(trial.get("healthy_seen", False)),
            container_restarts=int(trial.get("container_restarts", 0)),
        )
        if trial and build
        else None,
        rollback_to=_build(d.get("rollback_to")),
        bad=tuple(
            BadBuild(str(b["version"]), str(b["sha256"]), str(b["reason"]), str(b["at"]))
            for b in d.get("bad", [])
        ),
        etag=d.get("etag"),
        last_modified=d.get("last_modified"),
        consecutive_failures=int(d.get("consecutive_failures", 0)),
        last_check_at=d.get("last_check_at"),
        last_error=d.get("last_error"),
        next_check_at=d.get("next_check_at"),
        child=ChildInfo(_pid_or_none(child.get("pid")), child.get("version"),
                        str(child["state"]), str(child["since"]),
                        _float_or_none(child.get("create_time")))
        if child
        else None,
        launcher_pid=_pid_or_none(d.get("launcher_pid")),
        updated_at=d.get("updated_at"),
        extra=dict(d.get("extra", {})),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _pid_or_none(value: Any) -> int | None:
    """A pid as the journal should hold it; anything else (a string, 0, -5) is no pid."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


class Journal:
    """Reads and writes ``state.json`` in one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"
        # The journal before the last write, kept by a hard link (no data written): if
        # state.json is ever torn below the filesystem, the bad list is not lost with it.
        self.backup = state_dir / "state.json.prev"

    def load(self) -> State | None:
        """The stored state; None when there is none or it was unreadable (set aside)."""
        try:
            raw = read_nofollow(self.path)
        except FileNotFoundError:
            return None
        try:
            return from_dict(json.loads(raw))
        except JOURNAL_ERRORS as exc:
            aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("journal %s is unreadable (%s); set aside as %s", self.path, exc, aside.name)
        try:
            state = from_dict(json.loads(read_nofollow(self.backup)))
        except (OSError, *JOURNAL_ERRORS):
            return None
        log.warning("recovered the journal from %s (one step older; the files decide the rest)",
                    self.backup.name)
        return state

    def read_only(self) -> State | None:
        """The stored state without setting anything aside (for ``status``)."""
        try:
            return from_dict(json.loads(read_nofollow(self.path)))
        except FileNotFoundError:
            return None

    def clean_temp_files(self) -> list[str]:
        """Remove what a kill inside a write left: ``.state.json.*.tmp``, the link temp."""
        removed = []
        for p in self.path.parent.glob(".state.json.*"):
            if p.name.endswith(".tmp") or p.name == ".state.json.prev-link":
                p.unlink(missing_ok=True)
                removed.append(p.name)
        if removed:
            log.info("removed leftover journal temp files: %s", ", ".join(sorted(removed)))
        return removed

    def save(self, state: State) -> State:
        state = dataclasses.replace(state, updated_at=utc_iso())
        link = self.path.with_name(".state.json.prev-link")
        try:
            link.unlink(missing_ok=True)
            link_or_copy(self.path, link)
            os.replace(link, self.backup)
            link.unlink(missing_ok=True)  # left when both names were already one file
        except FileNotFoundError:
            pass
        write_atomic(self.path, to_json(state).encode() + b"\n")
        return state


class TolerantJournal(Journal):
    """A journal that outlives a full or read-only disk: a failed write is logged and the
    launcher carries on from memory, so the running agent is never stopped for it.

    ``save_strict`` is for the one write that must land before files move (the start of a
    swap); ``healthy`` says whether the last write landed.
    """

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.healthy = True

    def save(self, state: State) -> State:
        try:
            state = self.save_strict(state)
        except OSError as exc:
            if self.healthy:
                log.error("cannot write %s (%s); carrying on from memory, updates paused "
                          "until it can be written", self.path, exc.strerror or exc)
            self.healthy = False
            return state
        if not self.healthy:
            log.info("%s is writable again", self.path)
        self.healthy = True
        return state

    def save_strict(self, state: State) -> State:
        return super().save(state)
