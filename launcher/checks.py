"""The check runner: when the next update check runs, the worker's life, and its result.

It owns two timers: ``check.next`` (the next check) and ``check.limit`` (a worker that
runs past its limit is stopped). A check that falls due while the supervisor cannot take
a result (a trial runs, the launcher stops) is deferred, and ``resume`` schedules it when
that ends, so no path can leave the host without a next check.

``epoch`` is bumped whenever what a check decides on changes under it (the bad list, the
installed build, the source): a result from an older epoch is not acted on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable
from typing import Any

from launcher import install, isolated, ops, policy
from launcher.child import PipedChild, spawn_piped
from launcher.errors import HostError
from launcher.journal import State, utc_iso
from launcher.loop import Loop
from launcher.reaper import decode_status
from launcher.settings import Settings

log = logging.getLogger(__name__)

WORKER_GRACE_S = 2.0
# An update check (and the preflight it runs) is background work: it yields the CPU to the
# agent and whatever else the host serves, which matters most during a hand-over.
WORKER_NICE = 10
NEXT, LIMIT = "check.next", "check.limit"
Result = dict[str, Any]


class CheckRunner:
    def __init__(
        self,
        loop: Loop,
        settings: Callable[[], Settings],
        request: Callable[[], dict[str, Any]],
        env: dict[str, str],
        *,
        can_take_result: Callable[[], bool],
        on_result: Callable[[Result], None],
        on_scheduled: Callable[[float], None],
        rng: random.Random,
        parent: int,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.request = request
        self.env = env
        self.can_take_result = can_take_result
        self.on_result = on_result
        self.on_scheduled = on_scheduled
        self.rng = rng
        self.parent = parent
        self.worker: PipedChild | None = None
        self.epoch = 0
        self.recheck = False
        self.deferred = False

    # ---- when -----------------------------------------------------------------------

    def poll_delay(self, failures: int = 0, retry_after_s: float | None = None) -> float:
        s = self.settings()
        return policy.next_poll_delay(s.poll_interval_s, s.jitter_s, failures, retry_after_s,
                                      self.rng)

    def schedule(self, delay: float) -> None:
        if not self.settings().manifest_url:
            self.loop.timers.cancel(NEXT)
            return
        self.deferred = False
        self.loop.timers.set(NEXT, delay, self._due)
        self.on_scheduled(delay)
        log.info("next check in %.1fs", delay)

    def soon(self) -> None:
        """Something the check reads changed (a watched file, the bad list): check now."""
        if self.worker is not None:
            self.recheck = True
        elif self.can_take_result():
            self.schedule(0.0)
        else:
            self.deferred = True

    def resume(self) -> None:
        """The supervisor can take results again (a trial ended): the next check comes, at
        once if one fell due (or was asked for) meanwhile."""
        if self.worker is not None:
            return
        self.schedule(0.0 if self.deferred else self.poll_delay())

    def cancel(self) -> None:
        self.loop.timers.cancel(NEXT)

    @property
    def scheduled(self) -> bool:
        return self.loop.timers.pending(NEXT) or self.worker is not None

    def _due(self) -> None:
        if not self.can_take_result():
            log.info("check deferred until the trial ends")
            self.deferred = True
            return
        self._start()

    # ---- the worker -------------------------------------------------------------------

    def pids(self) -> set[int]:
        return {self.worker.proc.pid} if self.worker is not None else set()

    def _start(self) -> None:
        argv = isolated.argv("launcher.worker", parent=self.parent, nice=WORKER_NICE)
        try:
            self.worker = spawn_piped("update check", argv, isolated.worker_environ(self.env),
                                      self.loop.reaper, self.loop, self.epoch,
                                      stdin=json.dumps(self.request()).encode(),
                                      shown=isolated.shown("launcher.worker"))
        except OSError as exc:
            self._finish({"outcome": "error", "error": HostError(
                f"cannot start an update check: {exc.strerror or exc}").describe()})
            return
        limit = self.settings().download_deadline_s + 120.0
        self.loop.timers.set(LIMIT, limit, lambda: self._too_long(limit))

    def _too_long(self, limit: float) -> None:
        if self.worker is not None and self.worker.proc.running:
            log.error("update check ran past %.0fs; stopping it", limit)
            self.worker.proc.stop(WORKER_GRACE_S)

    def stop(self) -> None:
        """End a check in flight; what it was downloading is removed."""
        self.loop.timers.cancel(LIMIT)
        if self.worker is not None:
            self.worker.proc.stop(WORKER_GRACE_S)
            self.worker.close()
            self.worker = None
            install.clean_temp_files(self.settings().bin_dir)

    def poll(self) -> None:
        """Called each turn: a finished worker's result is read and handed on."""
        if self.worker is None or (status := self.worker.proc.poll()) is None:
            return
        worker, self.worker = self.worker, None
        self.loop.timers.cancel(LIMIT)
        worker.drain()
        worker.close()
        raw = bytes(worker.buf)
        try:
            result = json.loads(raw.splitlines()[-1]) if raw.strip() else None
        except (ValueError, RecursionError):
            result = None
        if not isinstance(result, dict):
            words = decode_status(status)[1]
            result = {"outcome": "error", "error": f"worker: update check {words} "
                      "without a result"}
            install.clean_temp_files(self.settings().bin_dir)
        if worker.epoch != self.epoch and result.get("outcome") not in ("error", "fault"):
            log.info("discarding a check result that predates an operator command; "
                     "checking again")
            install.clean_temp_files(self.settings().bin_dir)
            self.schedule(0.0)
            return
        self._finish(result)

    def _finish(self, result: Result) -> None:
        self.on_result(result)

    def take_recheck(self) -> bool:
        recheck, self.recheck = self.recheck, False
        return recheck


def check_request(settings: dict[str, Any], state: State | None, *, stage: bool,
                  conditional: bool) -> dict[str, Any]:
    """What a worker needs for one check (``launcher.worker`` reads it on stdin): the
    settings, the installed build, the bad list, the host id, what is known of manifests
    accepted before (``trust``: serial floors, the last expiry) and, for a conditional
    fetch, the validators of the last accepted manifest."""
    return {
        "trust": state.extra.get("trust") if state else None,
        "settings": settings,
        "current": dataclasses.asdict(state.current) if state and state.current else None,
        "bad": [[b.version, b.sha256] for b in state.bad] if state else [],
        "host_id": state.host_id if state else "no-host-id-yet",
        "etag": state.etag if state and conditional else None,
        "last_modified": state.last_modified if state and conditional else None,
        "stage": stage,
        "pin": state.extra.get("pin") if state else None,  # launcher.controls
    }


def resident_request(s: Settings, state: State, env: dict[str, str]) -> dict[str, Any]:
    """The worker's request for a check the resident runs. The source token travels in it
    (over the worker's stdin), never in the worker's environment, which other processes of
    this user can read."""
    request = check_request(s.for_worker(), state, stage=True, conditional=True)
    if token := env.get("GITHUB_TOKEN"):
        request["settings"] = {**request["settings"], "github_token": token}
    if s.proxy == "env":  # the worker's environment carries no proxy variables
        request["settings"] = {**request["settings"],
                               "proxy_env": ops.proxy_environment(env)}
    return request


def record_check(state: State, result: dict[str, Any], at: str) -> State:
    """``state`` with what a worker's result says about trust (see ``launcher.trust``):
    ``signatures`` (required | off) and, for an accepted manifest, ``accepted`` — kept as
    the last accepted manifest, its serial raising its key's floor, which never goes down."""
    extra = dict(state.extra)
    if result.get("signatures") in ("required", "off"):
        extra["signatures"] = result["signatures"]
    accepted = result.get("accepted")
    if isinstance(accepted, dict):
        trust = dict(extra.get("trust") or {})
        serials = {k: v for k, v in dict(trust.get("serials") or {}).items()
                   if _is_int(v)}
        key, serial = accepted.get("key"), accepted.get("serial")
        if isinstance(key, str) and isinstance(serial, int) and not isinstance(serial, bool):
            serials[key] = max(serial, serials.get(key, serial))
        trust["serials"] = serials
        trust["accepted"] = {**{k: accepted.get(k) for k in ("version", "serial", "expires",
                                                             "key")}, "at": at}
        extra["trust"] = trust
    return dataclasses.replace(state, extra=extra) if extra != state.extra else state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record(state: State, r: Result, now: float) -> State:
    """The journal after a check: when, what failed, the validators worth keeping.

    Validators are kept only once nothing is left to do with this manifest: after a
    staged build they stay empty, so a swap that is interrupted, fails or is rolled back
    is re-decided on a full fetch; after any error they are dropped.
    """
    st = dataclasses.replace(state, last_check_at=utc_iso(now))
    if r.get("outcome") == "error":
        return dataclasses.replace(st, consecutive_failures=st.consecutive_failures + 1,
                                   last_error=str(r.get("error")), etag=None,
                                   last_modified=None)
    staged = r.get("outcome") == "staged"
    st = dataclasses.replace(st, consecutive_failures=0, last_error=None,
                             etag=None if staged else _str(r.get("etag")),
                             last_modified=None if staged else _str(r.get("last_modified")))
    if isinstance(r.get("version"), str):
        st = dataclasses.replace(st, extra={**st.extra, "last_seen_version": r["version"]})
    return st


def retry_after(r: Result) -> float | None:
    value = r.get("retry_after_s")
    return float(value) if isinstance(value, int | float) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
