"""``nginx-manager-launcher status``: what the journal says, read without the lock.

``--json`` prints one object (the names are DESIGN.md's contract); without it, a few lines
for a person. Reads only ``state.json`` and the lock file's pid, never the settings: what
the launcher enforces (``signatures``) is what the running (or last) launcher journaled.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from launcher import controls, settings
from launcher.errors import ConfigError
from launcher.journal import Journal, State
from launcher.lock import holder_pid
from launcher.progress import describe_transfer, read_transfer

DEFAULT_STATE_DIR = "/var/lib/nginx-manager"


def state_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or os.environ.get(settings.ENV_PREFIX + "STATE_DIR")
                or DEFAULT_STATE_DIR)


def status_dict(state: State | None, state_dir: Path) -> dict[str, Any]:
    pid = holder_pid(state_dir)
    if state is None:
        return {"state_dir": str(state_dir), "current_version": None, "phase": "empty",
                "previous_version": None, "bad_versions": [], "bad": [],
                "last_check_at": None, "last_error": None, "next_check_at": None,
                "launcher_pid": pid, "agent": None, "host_id": None, "trial": None,
                "cohort": None, "cohort_version": None, "signatures": None, "serial": None,
                "expires": None, "stale_since": None, "transfer": read_transfer(state_dir),
                **controls.status_fields(None, 0.0), **_ops(None)}
    child = state.child
    return {
        "state_dir": str(state_dir),
        "current_version": state.current.version if state.current else None,
        "current_sha256": state.current.sha256 if state.current else None,
        "phase": state.phase,
        "previous_version": state.previous.version if state.previous else None,
        "bad_versions": sorted({b.version for b in state.bad}),
        "bad": [b.__dict__ for b in state.bad],
        "last_check_at": state.last_check_at,
        "last_error": state.last_error,
        "next_check_at": state.next_check_at if pid else None,
        "consecutive_failures": state.consecutive_failures,
        "launcher_pid": pid,
        "agent": {"pid": child.pid, "version": child.version, "state": child.state,
                  "since": child.since} if child and pid else None,
        "last_agent_exit": state.extra.get("last_agent_exit"),
        "trial": {"version": state.trial.build.version, "run_time_s": state.trial.run_time_s,
                  "healthy_seen": state.trial.healthy_seen} if state.trial else None,
        "host_id": state.host_id,
        **_cohort(state),
        **_trust(state),
        **controls.status_fields(state, time.time()),  # hold, pin, channel, window, ...
        "transfer": read_transfer(state_dir),
        **_ops(state),
    }


def _ops(state: State | None) -> dict[str, Any]:
    """The proxy (redacted), metrics file and log format the launcher journaled at start."""
    raw = state.extra.get("ops") if state is not None else None
    ops = raw if isinstance(raw, dict) else {}
    return {k: ops.get(k) if isinstance(ops.get(k), str) else None
            for k in ("proxy", "metrics_file", "log_format")}


def _trust(state: State, now: float | None = None) -> dict[str, Any]:
    """What the journal says of release authenticity and freshness (see launcher.trust):
    the mode the launcher enforces, the last accepted manifest's serial and expiry, and
    ``stale_since`` — that expiry once it has passed without a fresher manifest."""
    from datetime import UTC, datetime

    trust = state.extra.get("trust")
    accepted = trust.get("accepted") if isinstance(trust, dict) else None
    accepted = accepted if isinstance(accepted, dict) else {}
    expires = accepted.get("expires") if isinstance(accepted.get("expires"), str) else None
    stale_since = None
    if expires is not None:
        try:
            moment = datetime.fromisoformat(expires)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and datetime.fromtimestamp(
                time.time() if now is None else now, UTC) >= moment:
            stale_since = expires
    signatures = state.extra.get("signatures")
    return {"signatures": signatures if signatures in ("required", "off") else None,
            "serial": accepted.get("serial"), "expires": expires, "stale_since": stale_since}


def _cohort(state: State) -> dict[str, Any]:
    """This host's rollout cohort for the newest version the journal knows of."""
    from packaging.version import InvalidVersion, Version

    from launcher import policy

    seen = [getattr(state, "last_seen_version", None), state.extra.get("last_seen_version"),
            *(b.version for b in (state.current, state.previous, state.rollback_to) if b),
            *(b.version for b in state.bad),
            state.trial.build.version if state.trial else None,
            state.staged.build.version if state.staged else None]
    versions: list[tuple[Version, str]] = []
    for text in seen:
        if isinstance(text, str):
            try:
                versions.append((Version(text), text))
            except InvalidVersion:
                continue
    if not versions:
        return {"cohort": None, "cohort_version": None}
    newest = max(versions)[1]
    return {"cohort": policy.cohort(state.host_id, newest), "cohort_version": newest}


def _control_lines(d: dict[str, Any]) -> list[str]:
    """The operator controls in force (``launcher.controls``), one line each."""
    lines = []
    if d["hold"]:
        lines.append(f"hold:        since {d['hold'].get('since')} by {d['hold'].get('by')}: "
                     f"{d['hold'].get('reason') or 'no reason given'}")
    if d["pin"]:
        lines.append(f"pin:         never above {d['pin']}")
    if d["install"]:
        i = d["install"]
        lines.append(f"install:     {i.get('version')} asked by {i.get('by')} at {i.get('at')}: "
                     f"{i.get('state')}" + (f" ({i['error']})" if i.get("error") else ""))
    if d["channel"]:
        lines.append(f"channel:     {d['channel']}")
    if d["window"]:
        lines.append(f"window:      {'; '.join(d['window'])}, next {d['next_window']}")
    if d["waiting"]:
        lines.append(f"waiting:     {d['waiting']} is staged, for the window")
    if d["available"]:
        lines.append(f"available:   {d['available']} (not taken: held)")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    try:
        state = Journal(state_dir).read_only()
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{state_dir}/state.json is unreadable: {exc}") from exc
    d = status_dict(state, state_dir)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    phase = {"committed": "committed", "trial": "on trial", "empty": "nothing installed"}.get(
        d["phase"], d["phase"])
    lines = [
        f"state dir:   {state_dir}",
        f"installed:   {d['current_version'] or '-'} ({phase})",
        f"previous:    {d['previous_version'] or '-'}",
    ]
    if d["trial"]:
        lines.append(f"trial:       {d['trial']['run_time_s']:.1f}s done")
    agent = d["agent"]
    if d["launcher_pid"] is None:
        lines.append("launcher:    not running")
    else:
        running = (f"agent {agent['version']} {agent['state']}"
                   + (f" (pid {agent['pid']})" if agent and agent['pid'] else "")) if agent else "-"
        lines.append(f"launcher:    pid {d['launcher_pid']}, {running}")
    for b in d["bad"]:
        lines.append(f"bad build:   {b['version']} (sha256 {b['sha256'][:12]}) at {b['at']}: "
                     f"{b['reason']}")
    lines.append(f"last check:  {d['last_check_at'] or 'never'}"
                 + (f", error: {d['last_error']}" if d["last_error"] else ""))
    lines.append(f"next check:  {d['next_check_at'] or '-'}")
    if d["transfer"]:
        lines.append(f"transfer:    {describe_transfer(d['transfer'])}")
    lines.append(f"signatures:  {d['signatures'] or '-'}"
                 + (f", serial {d['serial']}" if d["serial"] is not None else "")
                 + (f", expires {d['expires']}" if d["expires"] else "")
                 + (f" (STALE since {d['stale_since']})" if d["stale_since"] else ""))
    lines += _control_lines(d)
    if d["host_id"]:
        lines.append(f"host id:     {d['host_id']}")
    lines.append(f"proxy:       {d['proxy'] or 'none (direct)'}")
    if d["metrics_file"]:
        lines.append(f"metrics:     {d['metrics_file']}")
    if d["log_format"]:
        lines.append(f"log format:  {d['log_format']}")
    if d.get("cohort") is not None:
        lines.append(f"cohort:      {d['cohort']:.3f} for {d['cohort_version']} (a rollout "
                     f"includes this host above {d['cohort']:.3f}%)")
    print("\n".join(lines))
    return 0
