"""The update machine: swap a verified build in, run its trial, commit it or roll it back;
and the operator's commands that act on it (``rollback``, ``unblock``).

It owns the trial judge (``launcher.trial``) and its timer (``trial.tick``). Every way a
trial ends goes through ``_act``: commit, or roll back (or, with no other build to go back
to, keep the failed one marked bad); either way the check runner is resumed, so the host
always has a next check.

With ``--handover overlap`` a swap starts the new agent while the old one still serves
(the keeper keeps it as ``outgoing``) and the old one is stopped at the new one's
``READY=1``; a trial that fails before that takes the old one back, so it never stopped.
A rollback from a running agent overlaps the same way, the failed agent serving until the
restored one is ready (at most ``HEALTH_GRACE_S``: an older build may not speak sd_notify).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from launcher import container, control, controls, health, install
from launcher.errors import HostError
from launcher.journal import Build, Staged, Trial
from launcher.resident import Resident
from launcher.trial import HEALTH_GRACE_S, TrialJudge, Verdict

log = logging.getLogger(__name__)

TICK = "trial.tick"


class StartAgent(Protocol):
    def __call__(self, overlap: bool = False, deadline_s: float | None = None) -> None: ...


class Updates:
    def __init__(self, res: Resident, start_agent: StartAgent,
                 exit_: Callable[[int], None]) -> None:
        self.res = res
        self.start_agent = start_agent
        self.exit = exit_
        self.judge: TrialJudge | None = None
        self.agent_status: str | None = None

    @property
    def overlap(self) -> bool:
        return self.res.s.handover == "overlap" and not self.res.container

    # ---- the swap ----------------------------------------------------------------------

    def apply(self, build: Build, staged_file: str) -> None:
        res, s = self.res, self.res.s
        # Replacing nothing, or a build that cannot tell its version: no trial to run.
        first = res.state.current is None or res.state.current.version == "unknown"
        try:
            res.state = res.journal.save_strict(dataclasses.replace(
                res.state, phase="swapping", staged=Staged(build, staged_file)))
        except OSError as exc:
            log.error("cannot journal the swap to %s (%s); not swapping, will retry",
                      build.version, exc.strerror or exc)
            install.clean_temp_files(s.bin_dir)
            res.state = dataclasses.replace(res.state, last_error=HostError(
                f"cannot write the journal: {exc.strerror or exc}").describe())
            res.checks.schedule(res.checks.poll_delay(1))
            return
        res.fault("staged")
        try:
            install.swap_in(s.bin_dir, staged_file, res.fault_hook)
        except OSError as exc:
            log.error("swap to %s failed: %s; keeping %s", build.version, exc, res.version())
            install.clean_temp_files(s.bin_dir)
            res.save(dataclasses.replace(
                res.state, phase="empty" if res.state.current is None else "committed",
                staged=None, last_error=HostError(f"swap failed: {exc}").describe()))
            res.checks.schedule(res.checks.poll_delay(1))
            return
        if first:
            if res.state.current is not None:  # an unidentifiable build: not worth keeping
                (s.bin_dir / install.OLD).unlink(missing_ok=True)
            res.save(dataclasses.replace(
                res.state, phase="committed", current=build, previous=None, staged=None))
            log.info("installed %s", build.version)
            self.start_agent()
            res.checks.resume()
            return
        res.save(dataclasses.replace(
            res.state, phase="trial", previous=res.state.current, current=build, staged=None,
            trial=Trial(build=build, started_at=res.now_iso())))
        res.fault("swapped")
        log.info("swapped in %s; %s kept as agent.old", build.version,
                 res.state.previous.version if res.state.previous else "?")
        if not self.overlap:
            res.keeper.stop()
        if res.container:
            container.say_swapped(build.version)
            res.notify.stopping()
            self.exit(container.EXIT_SWAPPED)
            return
        assert res.state.trial is not None
        self.judge = self._judge(res.state.trial)
        # A build is applied only from a committed state, so an agent still on its way out
        # is a rolled-back build serving until the restored one was ready: stop it now, so
        # that the restored agent (the build at agent.old) is what the new one takes over
        # from, and what a rollback of the new one takes back.
        res.keeper.finish_handover()
        self.start_agent(overlap=self.overlap)
        res.fault("trial.started")

    # ---- the trial ---------------------------------------------------------------------

    def resume_trial(self) -> None:
        """A trial the journal holds (a launcher restart, a reboot, our own exit 100)."""
        res = self.res
        trial = res.state.trial
        assert trial is not None
        if res.container:
            # The first start after our own exit 100 is expected; more mean the container
            # itself keeps dying (OOM, liveness probe) while this build is on trial.
            trial = dataclasses.replace(trial, container_restarts=trial.container_restarts + 1)
            res.save(dataclasses.replace(res.state, trial=trial))
            extra = trial.container_restarts - 1
            if extra > container.MAX_TRIAL_RESTARTS:
                self.rollback(f"container restarted {extra} times during the trial")
                return
        log.info("resuming the trial of %s: %.1fs of %.1fs done", trial.build.version,
                 trial.run_time_s, res.s.health_window_s)
        self.judge = self._judge(trial)

    def child_started(self) -> None:
        if self.judge is not None:
            self.judge.child_started()
            self._observe_later()

    def child_exited(self, words: str, ran_s: float) -> bool:
        """The trial child exited: the trial fails. False when no trial runs."""
        if self.judge is None:
            return False
        self._act(self.judge.child_exited(words, ran_s))
        return True

    def note_trial_time(self) -> None:
        """Keep the trial child's run time before it is stopped (a stop is not a verdict)."""
        if self.judge is not None and self.res.keeper.running:
            self.judge.ran(self.res.keeper.age_s())
            self.res.save(dataclasses.replace(self.res.state, trial=self.judge.record))

    def end_trial(self) -> None:
        if self.judge is not None:
            self.res.state = dataclasses.replace(self.res.state, trial=self.judge.record)
        self.judge = None
        self.res.loop.timers.cancel(TICK)

    def _judge(self, trial: Trial) -> TrialJudge:
        s = self.res.s
        return TrialJudge(trial, s.health_window_s, health_url=s.health_url, ready=s.ready,
                          watchdog_s=s.agent_watchdog_s or None)

    def on_notify(self, sender: int, fields: dict[str, str]) -> None:
        """An sd_notify message from ``sender``: counts only from the current agent's
        process group (STATUS= is logged for the outgoing one too)."""
        keeper = self.res.keeper
        who = keeper.which(sender)
        if who is None:
            log.debug("notify message from pid %d, not an agent of ours: dropped", sender)
            return
        status = fields.get("STATUS")
        if status is not None and status != self.agent_status:
            self.agent_status = status
            log.info("agent (pid %d) status: %s", sender, status[:200])
        if who != "current":
            return
        if fields.get("READY") == "1" and not keeper.ready:
            age = keeper.age_s()
            log.info("agent %s (pid %d) is ready (READY=1) %.2fs after its start",
                     self.res.version(), sender, age)
            if self.judge is not None:
                self.judge.ready(age)
            keeper.child_ready()
        if fields.get("WATCHDOG") == "1" and self.judge is not None:
            self.judge.watchdog(keeper.age_s())

    def _observe_later(self) -> None:
        assert self.judge is not None
        self.res.loop.timers.set(TICK, self.judge.next_observation_in(), self._observe)

    def _observe(self) -> None:
        res, judge = self.res, self.judge
        res.reaper.reap()  # an exit that has happened is seen before any verdict
        if judge is None or not res.keeper.running:
            return
        url = res.s.health_url
        ok = health.probe(url) if url else None
        seen = judge.record.healthy_seen
        verdict = judge.observe(res.keeper.age_s(), ok)
        if judge.record.healthy_seen and not seen:
            log.info("agent %s answers %s", judge.record.build.version, url)
        res.save(dataclasses.replace(res.state, trial=judge.record))
        self._act(verdict)

    def _act(self, verdict: Verdict) -> None:
        if verdict.kind == "wait":
            if self.res.keeper.running:
                self._observe_later()
            return
        self.end_trial()
        if verdict.kind == "commit":
            self._commit()
        else:
            self.rollback(verdict.reason)

    # ---- the ends of a trial -----------------------------------------------------------

    def _commit(self) -> None:
        res = self.res
        trial = res.state.trial
        assert trial is not None
        res.fault("trial.passed")
        res.save(controls.trial_ended(dataclasses.replace(res.state, phase="committed",
                                                          trial=None),
                                      trial.build, True, "", res.now_iso()))
        res.fault("committed")
        log.info("update to %s committed after %.1fs healthy", trial.build.version,
                 trial.run_time_s)
        res.keeper.reset_backoff()
        res.save_child("running")
        res.checks.resume()

    def rollback(self, reason: str, *, checked: bool = False) -> None:
        """Put ``agent.old`` back, mark the failed build bad, restart the agent. With no
        other build to go back to, the failed one is marked bad and kept; either way the
        checks go on, so a fixed release can install. ``checked``: the caller has
        just found that ``install.rollback_refusal`` has no objection."""
        res = self.res
        self.end_trial()
        failed = res.state.current
        assert failed is not None
        res.state = controls.trial_ended(res.state, failed, False, reason, res.now_iso())
        res.checks.epoch += 1
        refusal = None if checked else install.rollback_refusal(res.state, res.s.bin_dir,
                                                                res.shas)
        ok = False
        if refusal is None:
            # Journaled and renamed while the failed build still runs (it runs from its
            # inode; an overlap does the same): with stop-first, the time no agent serves is
            # the stop and the start alone.
            try:
                res.state, ok = control.rollback(res.state, res.s.bin_dir, res.journal, reason,
                                                 res.now_iso(), res.fault_hook, res.shas,
                                                 checked=True)
            except OSError as exc:  # bin/ read-only or gone: nothing moved
                refusal = f"cannot rename agent.old back: {exc.strerror or exc}"
                res.state = dataclasses.replace(res.state, rollback_to=None,
                                                last_error=HostError(refusal).describe())
            if ok and not self.overlap:
                res.keeper.stop()
        if not ok:
            log.error("cannot roll back from %s (%s): %s; keeping it", failed.version, reason,
                      refusal or "agent.old is gone")
            res.save(dataclasses.replace(res.state.with_bad(failed, reason, res.now_iso()),
                                         phase="committed", trial=None))
            res.keeper.finish_handover()  # the files say the failed build: it is what runs
            if not res.keeper.running and not res.keeper.restart_pending:
                self.start_agent()
        else:
            log.error("rolled back to %s: %s %s", res.version(), failed.label(), reason)
            res.keeper.reset_backoff()
            if res.keeper.take_back():
                res.save_child("running")
            else:
                self.start_agent(overlap=self.overlap, deadline_s=HEALTH_GRACE_S)
        res.checks.resume()

    # ---- operator commands (over the control socket) ------------------------------------

    def command(self, request: dict[str, object]) -> dict[str, object]:
        res = self.res
        cmd = request.get("cmd")
        if cmd == "rollback":
            refusal = install.rollback_refusal(res.state, res.s.bin_dir, res.shas)
            if refusal is not None:
                return {"ok": False, "refused": True, "error": refusal}
            failed = res.state.current
            assert failed is not None
            self.rollback("rolled back by the operator", checked=True)
            return {"ok": True, "message": f"rolled back from {failed.version} to "
                    f"{res.version()}; {failed.version} is blocked until unblocked"}
        if cmd == "unblock":
            version = str(request.get("version"))
            res.checks.epoch += 1
            state, n = control.unblock(res.state, version)
            res.save(state)
            return {"ok": True, "message": f"unblocked {n} build(s) of {version}"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
