"""The health window of a build on trial, as a pure state machine: observations in, verdicts out.

No I/O and no clock of its own: the resident feeds it what it saw (the trial child's run
time, how long the current child has been up, a probe result) and acts on the verdict.

The rules, the same at every instant of the window:

- Health counts only once it can be fair: after the child has answered once in this run,
  or after the start-up grace (``grace_s``) has passed. A child restarted late in its
  window (the launcher restarted, the host rebooted) gets the whole grace again.
- ``unhealthy_probes`` consecutive failed probes that count fail the trial, mid-window as
  at its end: one failed probe on the last tick is not a verdict.
- The window is judged in the trial child's own run time. When it ends while a run of
  failures is still short, or while the child is still in its grace, the trial goes on
  until the run of failures resolves one way or the other or the grace ends.
- Without a health URL (``probe`` is None) only staying up counts.
- An exit of the trial child is always a failure.

With ``ready="notify"`` (the agent speaks sd_notify to the launcher):

- The window starts at the child's ``READY=1``: run time, the grace and the probes all
  count from there. A child that sends no ``READY=1`` within ``ready_timeout_s`` (10 s,
  whatever the window: a short window must not make a slow start fatal) fails the trial.
- Once the child has sent one ``WATCHDOG=1``, a gap longer than ``watchdog_s`` between
  two pings (or since the last one) fails the trial. A child that never pings is judged
  without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from launcher.journal import Trial

UNHEALTHY_PROBES = 3
HEALTH_GRACE_S = 10.0  # least time a (re)started trial child gets to answer its health URL


@dataclass(frozen=True)
class Verdict:
    kind: Literal["wait", "commit", "fail"]
    reason: str = ""


WAIT = Verdict("wait")
COMMIT = Verdict("commit")


class TrialJudge:
    """Judges one trial; ``record`` is the journaled part (run time, healthy seen)."""

    def __init__(self, record: Trial, window_s: float, *, health_url: str | None,
                 grace_s: float = HEALTH_GRACE_S,
                 unhealthy_probes: int = UNHEALTHY_PROBES, ready: str = "health",
                 watchdog_s: float | None = None,
                 ready_timeout_s: float = HEALTH_GRACE_S) -> None:
        self.record = record
        self.window_s = window_s
        self.health_url = health_url
        self.grace_s = min(grace_s, window_s)
        self.unhealthy_probes = unhealthy_probes
        self.failures = 0
        self.answered = False  # answered in the current child's run
        self.last_ok = False
        self.base_s = record.run_time_s  # run time before the current child started
        self.ended: Verdict | None = None
        self.notify = ready == "notify"
        self.watchdog_s = watchdog_s
        self.ready_timeout_s = ready_timeout_s
        self.ready_at: float | None = None  # the child's age at its READY=1
        self.pinged_at: float | None = None  # the child's age at its last WATCHDOG=1

    # ---- inputs -------------------------------------------------------------------

    def child_started(self) -> None:
        """A child of the trial build (re)started: its start-up grace begins again."""
        self.base_s = self.record.run_time_s
        self.failures = 0
        self.answered = False
        self.last_ok = False
        self.ready_at = None
        self.pinged_at = None

    def ready(self, age_s: float) -> None:
        """The child sent ``READY=1`` when it had been up ``age_s`` (the first one counts)."""
        if self.ready_at is None:
            self.ready_at = age_s

    def watchdog(self, age_s: float) -> None:
        """The child sent ``WATCHDOG=1`` at ``age_s``."""
        self.pinged_at = age_s

    def observe(self, age_s: float, probe: bool | None) -> Verdict:
        """The child has been up ``age_s`` seconds; ``probe`` is the health answer, or None
        when there is no health URL."""
        if self.ended is not None:
            return self.ended
        if self.notify:
            if self.ready_at is None:
                if age_s >= self.ready_timeout_s:
                    return self._end(Verdict("fail", f"agent sent no READY=1 within "
                                                     f"{self.ready_timeout_s:g}s of its start"))
                return WAIT
            stalled = self._stalled(age_s)
            if stalled is not None:
                return self._end(stalled)
            age_s -= self.ready_at
        run_s = self.base_s + age_s
        self.record = dataclasses.replace(self.record, run_time_s=run_s)
        if probe is not None:
            self._probe(probe, age_s)
            if self._counts(age_s) and self.failures >= self.unhealthy_probes:
                return self._end(Verdict("fail", f"agent stopped answering {self.health_url} "
                                                 f"({self.failures} failed probes)"))
        if run_s < self.window_s:
            return WAIT
        if probe is None or self.last_ok:
            return self._end(COMMIT)
        if self.record.healthy_seen or age_s < self.grace_s:
            # A short run of failures (the run of three ends it), or a child still in its
            # grace: the same rule as mid-window, also for a trial resumed near its end.
            return WAIT
        return self._end(Verdict("fail", f"agent never answered {self.health_url} during its "
                                         f"{self.window_s:g}s health window"))

    def ran(self, age_s: float) -> None:
        """Note the run time without judging (the child is about to be stopped)."""
        if self.ended is None:
            self.record = dataclasses.replace(self.record,
                                              run_time_s=self.base_s + self._window_age(age_s))

    def child_exited(self, words: str, age_s: float) -> Verdict:
        if self.ended is not None:
            return self.ended
        run_s = self.base_s + self._window_age(age_s)
        self.record = dataclasses.replace(self.record, run_time_s=run_s)
        return self._end(Verdict("fail", f"agent {words} after {run_s:.1f}s of its "
                                         f"{self.window_s:g}s health window"))

    # ---- internals ----------------------------------------------------------------

    def _window_age(self, age_s: float) -> float:
        """How much of ``age_s`` counts as window: all of it, or (notify) since READY."""
        if not self.notify:
            return age_s
        return 0.0 if self.ready_at is None else max(0.0, age_s - self.ready_at)

    def _stalled(self, age_s: float) -> Verdict | None:
        if self.watchdog_s is None or self.pinged_at is None:
            return None
        silent = age_s - self.pinged_at
        if silent <= self.watchdog_s:
            return None
        return Verdict("fail", f"agent stopped its WATCHDOG=1 pings: none for {silent:.1f}s "
                               f"(WATCHDOG_USEC is {self.watchdog_s:g}s)")

    def _probe(self, ok: bool, age_s: float) -> None:
        self.last_ok = ok
        if ok:
            self.failures = 0
            self.answered = True
            if not self.record.healthy_seen:
                self.record = dataclasses.replace(self.record, healthy_seen=True)
        elif self._counts(age_s):
            self.failures += 1

    def _counts(self, age_s: float) -> bool:
        return self.answered or (self.record.healthy_seen and age_s >= self.grace_s)

    def _end(self, verdict: Verdict) -> Verdict:
        self.ended = verdict
        return verdict

    def tick_interval_s(self) -> float:
        """How often to observe: a tenth of the window, between 0.2 s and 2 s."""
        return min(2.0, max(0.2, self.window_s / 10))

    def next_observation_in(self) -> float:
        remaining = self.window_s - self.record.run_time_s
        if remaining <= 0:
            return self.tick_interval_s()
        return min(self.tick_interval_s(), remaining)
