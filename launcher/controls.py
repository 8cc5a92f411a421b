"""Operator controls: hold, resume, pin, unpin and install requests, kept in the journal.

One pure function, :func:`command`, turns a request into a new state and an answer; a
running launcher applies it to its journal (``launcher.updates``, over ``control.sock``),
the CLI applies it under the lock when none runs. Either way it is recorded before the
answer. The fields, in ``state.json`` under ``extra`` (the names status and the metrics
read)::

    hold         null | {"reason": str | null, "since": RFC 3339, "by": str}
    pin          null | "VERSION"              never update above it
    pin_set      null | {"by": str, "at": RFC 3339}
    install      null | {"version", "by", "at", "state", "error", "finished_at"}
                 state: pending (recorded) -> installing (swapped in, on trial)
                        -> done | failed (error says why)
    waiting      null | {"version", "sha256", "file", "since"}: a verified build staged as
                 bin/agent.next, waiting for a maintenance window (``launcher.gate``)
    available    null | "VERSION": what the last check offered but did not take (held)
    config_hold  null | {"reason", "since", "by": "config"}: ``hold`` in the config file
    config_pin   null | "VERSION": ``pin`` in the config file
    channel, window: what the running launcher follows (for status)

Standard library only: the resident uses this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from launcher import layout
from launcher.journal import Build, State
from launcher.settings import Settings

Answer = dict[str, object]
MAX_REASON = 500
COMMANDS = ("hold", "resume", "pin", "unpin", "install")


def _set(state: State, **fields: Any) -> State:
    return dataclasses.replace(state, extra={**state.extra, **fields})


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def hold_of(state: State) -> dict[str, Any] | None:
    """The hold in force: the host's own, else the config file's; None when not held."""
    return _dict(state.extra.get("hold")) or _dict(state.extra.get("config_hold"))


def pins_of(state: State) -> list[str]:
    """Every cap in force (the host's pin, the config file's): never above any of them."""
    return [p for p in (_text(state.extra.get("pin")), _text(state.extra.get("config_pin")))
            if p]


def install_of(state: State) -> dict[str, Any] | None:
    return _dict(state.extra.get("install"))


def install_pending(state: State) -> str | None:
    """The version an operator asked for and not yet tried, or None."""
    request = install_of(state)
    if request and request.get("state") == "pending":
        return _text(request.get("version"))
    return None


def command(state: State, request: dict[str, object], at: str) -> tuple[State, Answer]:
    """Apply one operator request; the new state and the answer (``ok``, ``message`` or
    ``error``; ``bad_argument`` for the CLI's exit 2). A state that changed has no
    validators: the next check fetches the manifest in full and decides anew (a 304 would
    say nothing about a lifted hold or pin)."""
    new, answer = _command(state, request, at)
    if new is not state:
        new = dataclasses.replace(new, etag=None, last_modified=None)
    return new, answer


def _command(state: State, request: dict[str, object], at: str) -> tuple[State, Answer]:
    cmd = request.get("cmd")
    by = who_asked(request)
    if cmd == "hold":
        reason = request.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON
                                   or not reason.isprintable()):
            return state, _bad(f"--reason must be one line of at most {MAX_REASON} characters")
        old = _dict(state.extra.get("hold"))
        since = old["since"] if old else at
        state = _set(state, hold={"reason": reason or None, "since": since, "by": by})
        return state, {"ok": True, "message": "held: no update is applied until `resume` "
                       "(checks go on and report what is available)"}
    if cmd == "resume":
        was = state.extra.get("hold") is not None
        state = _set(state, hold=None)
        config = _dict(state.extra.get("config_hold"))
        if config is not None:
            return state, {"ok": False, "error": ("the host's hold is lifted, but " if was
                                                  else "") + "the config file holds this "
                           f"host (hold = {config.get('reason')!r}): remove it there"}
        return state, {"ok": True, "message": "resumed: updates are applied again" if was
                       else "was not held; nothing to resume"}
    if cmd in ("pin", "install"):
        version = request.get("version")
        if not isinstance(version, str) or not layout.safe_name(version) \
                or not layout.is_version(version):
            return state, _bad(f"{version!r} is not a version")
        if cmd == "pin":
            return _set(state, pin=version, pin_set={"by": by, "at": at}), {
                "ok": True, "message": f"pinned: never above {version} until `unpin`"}
        return _install(state, version, by, at)
    if cmd == "unpin":
        pinned = _text(state.extra.get("pin"))
        state = _set(state, pin=None, pin_set=None)
        config_pin = _text(state.extra.get("config_pin"))
        message = f"unpinned (was {pinned})" if pinned else "was not pinned"
        if config_pin:
            message += f"; the config file still pins this host at {config_pin}"
        return state, {"ok": True, "message": message}
    return state, {"ok": False, "error": f"unknown command {cmd!r}"}


def who_asked(request: dict[str, object]) -> str:
    """Who to journal: the name the CLI gives, checked against the uid the kernel reports
    for the control socket's peer (when the request came over it)."""
    # Printable text only: a name with a newline or an escape code would forge log lines.
    said = "".join(c if c.isprintable() else "?" for c in str(request.get("by") or "unknown"))
    said = said[:100]
    uid = request.get("peer_uid")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return said
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return said if said.split(" ", 1)[0] == name else f"{name} (says {said})"


def _install(state: State, version: str, by: str, at: str) -> tuple[State, Answer]:
    hold = hold_of(state)
    if hold is not None:
        who = "the config file" if hold.get("by") == "config" else hold.get("by")
        return state, {"ok": False, "error": f"this host is held (by {who} since "
                       f"{hold.get('since')}: {hold.get('reason') or 'no reason given'}); "
                       "`resume` first"}
    bad = [b for b in state.bad if b.version == version]
    if bad:
        return state, {"ok": False, "error": f"{version} is marked bad ({bad[0].reason}, at "
                       f"{bad[0].at}): run `unblock {version}` first"}
    state = _set(state, install={"version": version, "by": by, "at": at, "state": "pending",
                                 "error": None, "finished_at": None},
                 pin=version, pin_set={"by": by, "at": at})
    return state, {"ok": True, "message": f"install of {version} recorded; this host is "
                   f"pinned at {version} (`unpin` lets it rise again)"}


def _bad(error: str) -> Answer:
    return {"ok": False, "bad_argument": True, "error": error}


# ---- the install's life ---------------------------------------------------------------

def install_step(state: State, version: str, step: str, at: str,
                 error: str | None = None) -> State:
    """The request for ``version`` moves on: installing, done, failed, or back to pending
    (a transient error: the next check tries again). Another version's request is kept."""
    request = install_of(state)
    if request is None or request.get("version") != version \
            or request.get("state") in ("done", "failed"):
        return state
    finished = at if step in ("done", "failed") else None
    return _set(state, install={**request, "state": step, "error": error,
                                "finished_at": finished})


def trial_ended(state: State, build: Build, ok: bool, reason: str, at: str) -> State:
    """A trial of ``build`` was committed or rolled back: an install of it is settled."""
    request = install_of(state)
    if request is None or request.get("state") != "installing" \
            or request.get("version") != build.version:
        return state
    return install_step(state, build.version, "done" if ok else "failed", at,
                        None if ok else f"rolled back: {reason}")


# ---- what the running launcher journals of its settings -----------------------------

def journal_settings(state: State, s: Settings, at: str) -> State:
    """The controls the settings put in force, for status (which never reads settings)."""
    old = _dict(state.extra.get("config_hold"))
    config_hold = None
    if s.hold:
        since = old["since"] if old and old.get("reason") == s.hold else at
        config_hold = {"reason": s.hold, "since": since, "by": "config"}
    fields = {"config_hold": config_hold, "config_pin": s.pin, "channel": s.channel,
              "window": list(s.windows) or None}
    if all(state.extra.get(k) == v for k, v in fields.items()):
        return state
    return _set(state, **fields)


def status_fields(state: State | None, now: float) -> dict[str, Any]:
    """``status --json``'s control fields (DESIGN.md: hold, pin, channel, window,
    next_window), plus the install request, a build waiting and what is available."""
    if state is None:
        return {"hold": None, "pin": None, "channel": None, "window": None,
                "next_window": None, "install": None, "waiting": None, "available": None}
    from launcher import window
    from launcher.journal import utc_iso

    specs = state.extra.get("window") or []
    try:
        opens = window.next_window(window.parse_all(specs), now)
    except (ValueError, TypeError, AttributeError):  # a journal edited by hand
        specs, opens = [], None
    waiting = _dict(state.extra.get("waiting"))
    return {
        "hold": hold_of(state),
        "pin": _lowest(pins_of(state)),
        "channel": _text(state.extra.get("channel")),
        "window": specs or None,
        "next_window": utc_iso(opens) if opens is not None else None,
        "install": install_of(state),
        "waiting": waiting.get("version") if waiting else None,
        "available": _text(state.extra.get("available")),
    }


def _lowest(pins: list[str]) -> str | None:
    from packaging.version import InvalidVersion, Version  # status only, never the resident

    try:
        return min(pins, key=Version, default=None)
    except InvalidVersion:
        return pins[0] if pins else None
