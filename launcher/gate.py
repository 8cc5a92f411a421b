"""Between a verified build and the swap: holds, maintenance windows, the operator's install.

The resident's side of ``launcher.controls`` and ``launcher.window``. It adds to each
worker request what the controls decide (an install request, ``stage: false`` while held,
the build already staged), and it takes each result before the supervisor does:

- a build staged outside every window is renamed ``bin/agent.next`` (``extra.waiting`` in
  the journal) and swapped when a window opens: the timer ``window.open`` wakes the
  resident at the window's start (re-armed at least hourly, so a clock change or a suspend
  is noticed); meanwhile checks go on, and a check that finds the same build does not fetch
  it again. A host that was down for a whole window swaps in the next one it sees.
- a hold wins over a window: a held host stages nothing, and a build waiting when a hold
  comes is dropped;
- a host with nothing installed takes its first build at once, held or not, window or not
  (an empty slot is not an update; a pin still applies);
- ``install VERSION`` swaps at once, window or not, and its request is settled (done,
  failed) in the journal.

Owns the timer ``window.open``. Standard library only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from launcher import controls, install, window
from launcher.files import fsync_dir
from launcher.journal import Build, utc_iso
from launcher.resident import Resident

log = logging.getLogger(__name__)

TIMER = "window.open"
NEXT = "agent.next"
REARM_S = 3600.0
RETRIED = ("transport", "https", "download", "host")  # an install retried on the next check
MAX_TRIES = 5  # ... this many times in all (a version that is not published fails for good)


class Gate:
    def __init__(self, res: Resident, apply: Callable[[Build, str], None]) -> None:
        self.res = res
        self.apply = apply

    def _windows(self) -> tuple[window.Window, ...]:
        return window.parse_all(self.res.s.windows)  # validated when the settings were loaded

    def held(self) -> bool:
        return controls.hold_of(self.res.state) is not None

    def _waiting(self) -> dict[str, Any] | None:
        w = self.res.state.extra.get("waiting")
        return w if isinstance(w, dict) else None

    def _set(self, **fields: Any) -> None:
        self.res.save(dataclasses.replace(self.res.state,
                                          extra={**self.res.state.extra, **fields}))

    # ---- start, commands -------------------------------------------------------------

    def start(self) -> None:
        """After recovery: keep a waiting build that is still there, drop a stray one."""
        nxt = self.res.s.bin_dir / NEXT
        if self._waiting() is not None and nxt.exists():
            self._arm()
        elif self._waiting() is not None or nxt.exists():
            self.discard()

    def urgent(self) -> bool:
        """An install request waits: check now rather than on the first-poll rule."""
        return controls.install_pending(self.res.state) is not None

    def command(self, request: dict[str, object]) -> dict[str, object]:
        res = self.res
        state, answer = controls.command(res.state, request, res.now_iso())
        if state is not res.state:
            try:
                res.state = res.journal.save_strict(state)
            except OSError as exc:
                return {"ok": False, "error": "cannot write the journal: "
                        f"{exc.strerror or exc}; nothing was recorded"}
            log.info("operator (%s): %s: %s", controls.who_asked(request), request.get("cmd"),
                     answer.get("message") or answer.get("error"))
            # What the next check decides on changed: a result in flight is not acted on,
            # a build waiting for a window is dropped, and the next check comes now.
            res.checks.epoch += 1
            self.discard()
            res.checks.soon()
        return answer

    # ---- the worker's request and result ------------------------------------------------

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        version = controls.install_pending(self.res.state)
        if version is not None and self.held():
            self.res.save(controls.install_step(self.res.state, version, "failed",
                                                self.res.now_iso(), "the host is held"))
            version = None
        if version is not None:
            return {**request, "install": version, "stage": True}
        if self.held() and self.res.state.current is not None:
            return {**request, "stage": False}
        waiting = self._waiting()
        if waiting is not None and (self.res.s.bin_dir / NEXT).exists():
            return {**request, "staged": waiting}
        return request

    def on_result(self, r: dict[str, Any]) -> bool:
        """Act on a check's result when it is the gate's to act on; True when it was."""
        outcome = r.get("outcome")
        if isinstance(r.get("install"), str):
            return self._install_result(r)
        if outcome in ("update", "install"):  # not staged: held
            self._set(available=r.get("version"))
            return False
        if outcome == "none" and (self._waiting() or self.res.state.extra.get("available")):
            self._set(available=None)
            self.discard()  # withdrawn, pinned below it, or marked bad meanwhile
        if outcome != "staged":
            return False
        build, name = Build(str(r["version"]), str(r["sha256"])), str(r["file"])
        res = self.res
        if res.state.extra.get("available"):
            self._set(available=None)
        empty = res.state.current is None  # an empty slot is filled at once: not an update
        if self.held() and not empty:  # held since the check started
            self.discard()
            self._drop(name)
        elif empty or window.is_open(self._windows(), res.wall()):
            if name != NEXT:
                self.discard()
            self._swap(build, name)
            return True
        else:
            self._wait(build, name)
        res.checks.schedule(res.checks.poll_delay())
        return True

    def _install_result(self, r: dict[str, Any]) -> bool:
        res, version = self.res, str(r["install"])
        if r.get("outcome") == "staged":
            build = Build(str(r["version"]), str(r["sha256"]))
            res.save(controls.install_step(res.state, version, "installing", res.now_iso()))
            log.info("installing %s on the operator's request", build.version)
            self.discard()
            self.apply(build, str(r["file"]))
            if res.state.phase != "trial":
                done = res.state.current == build
                res.save(controls.install_step(res.state, version, "done" if done else
                                               "failed", res.now_iso(),
                                               None if done else res.state.last_error))
            return True
        error = str(r.get("error"))
        request = controls.install_of(res.state) or {}
        attempts = request.get("attempts")
        tries = (attempts if isinstance(attempts, int) else 0) + 1
        if r.get("error_kind") in RETRIED and tries < MAX_TRIES:
            log.warning("install of %s: %s; trying again at the next check (%d of %d)",
                        version, error, tries, MAX_TRIES)
            self._set(install={**request, "attempts": tries, "error": error})
        else:
            log.error("install of %s refused: %s", version, error)
            res.save(controls.install_step(res.state, version, "failed", res.now_iso(), error))
        return False

    # ---- the window --------------------------------------------------------------------

    def _wait(self, build: Build, name: str) -> None:
        bin_dir = self.res.s.bin_dir
        try:
            if name != NEXT:
                os.replace(bin_dir / name, bin_dir / NEXT)
                fsync_dir(bin_dir)
        except OSError as exc:
            log.error("cannot keep the staged %s for the window: %s", build.version, exc)
            install.clean_temp_files(bin_dir)
            return
        old = self._waiting() or {}
        same = (old.get("version"), old.get("sha256")) == (build.version, build.sha256)
        self._set(waiting={"version": build.version, "sha256": build.sha256, "file": NEXT,
                           "since": old.get("since") if same else self.res.now_iso()})
        opens = self._arm()
        if not same:
            log.info("staged %s; the swap waits for the maintenance window (opens %s)",
                     build.version, utc_iso(opens) if opens is not None else "?")

    def _arm(self) -> float | None:
        now = self.res.wall()
        opens = window.next_open(self._windows(), now)
        delay = REARM_S if opens is None else min(max(0.0, opens - now), REARM_S)
        self.res.loop.timers.set(TIMER, delay, self._open)
        return opens

    def _open(self) -> None:
        res = self.res
        waiting = self._waiting()
        if waiting is None:
            return
        if not window.is_open(self._windows(), res.wall()):
            self._arm()  # early (the wall clock moved) or a re-arm: wait on
            return
        if self.held() or res.state.phase != "committed":
            # Held: nothing is swapped (the next check after a resume decides again). On
            # trial: the check after the commit finds this build staged and swaps it.
            log.info("a maintenance window is open, but the host is %s: no swap now",
                     "held" if self.held() else "on trial")
            return
        self._swap(Build(str(waiting["version"]), str(waiting["sha256"])), NEXT)

    def _swap(self, build: Build, name: str) -> None:
        res = self.res
        if name == NEXT:
            if res.shas([res.s.bin_dir / NEXT])[0] != build.sha256:
                log.error("the staged %s changed on disk while it waited; fetching it again",
                          build.version)
                self.discard()
                res.checks.soon()
                return
            log.info("maintenance window open: swapping in %s", build.version)
            self._set(waiting=None)
        if res.checks.worker is not None:
            res.checks.epoch += 1  # its result is not acted on during the trial
        self.apply(build, name)

    def discard(self) -> None:
        """Drop a build waiting for a window (the file and its journal entry)."""
        self.res.loop.timers.cancel(TIMER)
        self._drop(NEXT)
        if self._waiting() is not None:
            self._set(waiting=None)

    def _drop(self, name: str) -> None:
        try:
            (self.res.s.bin_dir / name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove bin/%s: %s", name, exc.strerror or exc)
