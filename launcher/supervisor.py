"""The resident: ties the loop, the agent keeper, the trial, the check runner and the watcher.

Single-threaded and event-driven (``launcher.loop``): it sleeps in ``select`` until a
signal, a helper's output, a control connection or the next timer, so an idle launcher
wakes only for its poll timer. Signal handlers only record; the loop acts. What happens
next is owned by one part each: the keeper (the agent and its one pending restart), the
trial judge (``launcher.trial``, pure), the check runner (the next check, the worker),
the watcher. This module decides between them: swap, commit, roll back, commands.
Imports the standard library and psutil only; HTTP and parsing live in ``worker``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher import (
    checks,
    container,
    control,
    controls,
    faults,
    install,
    metrics,
    ops,
    permissions,
    policy,
)
from launcher import reload as live_config
from launcher import seed as seeding
from launcher.child import agent_environ
from launcher.errors import ConfigError
from launcher.gate import Gate
from launcher.handoff import Handoff
from launcher.journal import Build, State, new_state
from launcher.keeper import AgentKeeper
from launcher.lock import StateLock
from launcher.reaper import decode_status, signal_name
from launcher.resident import Resident
from launcher.settings import Settings
from launcher.survivors import stop_strays, stop_survivor
from launcher.updates import Updates
from launcher.watcher import Watcher

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        environ: dict[str, str] | None = None,
        fault: faults.FaultHook | None = None,
        config_file: Path | None = None,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        # An absolute state dir: the agent's command line names it, and a later launcher
        # (maybe started from elsewhere) must recognise a survivor by it.
        settings = dataclasses.replace(settings, state_dir=settings.state_dir.absolute())
        res = self.res = Resident(settings, env, wall,
                                  fault if fault is not None else faults.resident_hook(env))
        self.config_file = config_file.resolve() if config_file is not None else None
        self.reload = reload
        self.lock = StateLock(settings.state_dir)
        self.exit_code: int | None = None
        self.control: control.ControlServer | None = None
        self.handoff = Handoff()
        self.keeper = res.keeper = AgentKeeper(
            res.loop, lambda: [str(res.s.agent_path), *res.s.agent_args], agent_environ(env),
            lambda: res.s.stop_grace_s, on_exit=self._on_agent_exit,
            on_restart_due=self._start_agent,
            tracked=lambda: self.checks.pids() | self.watcher.pids())
        self.checks = res.checks = checks.CheckRunner(
            res.loop, lambda: res.s, self._check_request, env,
            can_take_result=lambda: res.state.phase != "trial" and not res.stopping,
            on_result=self._on_result, on_scheduled=self._on_scheduled,
            rng=rng or random.Random(), parent=res.pid)
        self.watcher = Watcher(res.loop, env, res.pid,
                               lambda p: self.config.changed(p))  # noqa: PLW0108 (made below)
        self.config = live_config.LiveConfig(res, self.watcher,
                                             self.config_file if reload else None, reload)
        self.keeper.spawn = self.handoff.spawn
        self.handoff.serving = lambda: self.keeper.outgoing is not None
        self.updates = Updates(res, self._start_agent, self._exit)
        self.gate = Gate(res, self.updates.apply)  # hold, pin, window, install
        self.loop = res.loop
        self.loop.on_signal = self._on_signal
        self.loop.pollers = [self.keeper.poll, self.checks.poll, self.watcher.poll]
        self.loop.owned = lambda: self.keeper.pids() | self.checks.pids() | self.watcher.pids()

    @property
    def s(self) -> Settings:
        return self.res.s

    @property
    def state(self) -> State:
        return self.res.state

    # ---- life cycle -------------------------------------------------------------

    def run(self) -> int:
        """Supervise until asked to stop; returns the process exit code."""
        if self.res.container and (problem := container.volume_problem(self.s.state_dir)):
            raise ConfigError(problem)
        try:
            self.s.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create state directory {self.s.state_dir}: "
                              f"{exc.strerror}") from exc
        permissions.check_state_dir(self.s.state_dir, self.s.bin_dir, container=self.res.container)
        permissions.not_dumpable()
        self.handoff.adopt_systemd(self.res.env)  # before anything is spawned
        self.lock.acquire()
        try:
            self.res.reaper.install()
            self._start()
            while self.exit_code is None:
                self.loop.turn()
            return self.exit_code
        finally:
            self._shutdown()
            self.lock.release()

    def _start(self) -> None:
        """Recover, then start what the journal and the files say. A SIGTERM that arrives
        during any step is acted on as soon as that step ends: the loop's first turn."""
        res, s = self.res, self.s
        log.info("launcher starting (pid %d, state %s, mode %s, platform %s)", res.pid,
                 s.state_dir, "container" if res.container else "standalone", s.platform)
        res.journal.clean_temp_files()
        stored = res.journal.load()
        state = install.recover(stored or new_state(), s.bin_dir, res.shas)
        # Status tells what is enforced: signatures, the controls the settings set, the
        # proxy, metrics file and log format.
        state = dataclasses.replace(state, launcher_pid=res.pid, extra={
            **state.extra, "signatures": s.signatures, "ops": ops.record(s, res.env)})
        res.save(controls.journal_settings(state, s, res.now_iso()))
        stop_survivor(res.state.child, s.stop_grace_s, str(s.agent_path))
        stop_strays(str(s.agent_path), s.stop_grace_s)
        if res.state.current is not None and res.state.current.version == "unknown":
            res.save(seeding.learn_version(res.state, s.agent_path, res.run))
        if s.seed_binary is not None and not res.reaper.stop_requested():
            self.res.seed()
        if res.reaper.stop_requested():
            return
        self.keeper.env = {**self.keeper.env, **self.handoff.open(
            s, self.loop, res.container, self.updates.on_notify)}
        try:
            self.control = control.ControlServer(s.state_dir, self._command, self.loop)
        except OSError as exc:
            log.warning("control socket unavailable (%s); rollback/unblock need the launcher "
                        "stopped", exc)
        self.watcher.watch(self.config.paths())
        self.gate.start()
        if res.state.phase == "trial":
            self.updates.resume_trial()
        if res.state.current is not None and not self.keeper.running \
                and not self.keeper.restart_pending and self.exit_code is None:
            self._start_agent()
        if not s.manifest_url:
            if res.state.current is None:
                raise ConfigError("nothing to run: give --manifest-url or --seed-binary")
            log.info("no --manifest-url: supervising only, no update checks")
        elif res.state.phase != "trial":
            self.checks.schedule(0.0 if self.gate.urgent() else policy.first_poll_delay(
                s.poll_interval_s, s.jitter_s, self.checks.rng,
                installed=res.state.current is not None))
        res.notify.ready(res.describe())
        if interval := res.notify.watchdog_interval_s():
            self._watchdog(interval)

    def _watchdog(self, interval: float) -> None:
        self.res.notify.watchdog()
        self.loop.timers.set("watchdog", interval, lambda: self._watchdog(interval))

    def _shutdown(self) -> None:
        self.watcher.stop()
        self.checks.stop()
        self.updates.note_trial_time()
        self.keeper.stop()  # the outgoing agent of an overlap too, while the current waits
        self.keeper.end_leftovers()
        if self.control is not None:
            self.control.close()
        self.handoff.close()
        self.res.reaper.uninstall()
        self.res.reaper.close()
        self.loop.close()

    def _exit(self, code: int) -> None:
        self.exit_code = code
        self.loop.done = True

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s: stopping", signal_name(signum))
            self._requested_stop()
        elif self.keeper.child is not None and self.keeper.running:
            log.info("forwarding %s to the agent (pid %d)", signal_name(signum),
                     self.keeper.child.pid)
            self.keeper.child.send(signum)

    def _requested_stop(self) -> None:
        self.res.stopping = True
        self.res.notify.stopping()
        self.checks.stop()
        self.watcher.stop()
        code = 0
        self.updates.note_trial_time()
        # Whatever runs: an overlap's outgoing agent may serve while the current one is in
        # crash backoff (not running), and it must not outlive a clean stop.
        running = self.keeper.running
        status = self.keeper.stop()
        exit_code = decode_status(status)[0] if running and status is not None else 0
        if exit_code not in (0, 128 + signal.SIGTERM):
            code = exit_code
        self.keeper.end_leftovers()
        self.res.save_child("stopped")
        self._exit(code)

    # ---- the agent ----------------------------------------------------------------

    def _start_agent(self, overlap: bool = False, deadline_s: float | None = None) -> None:
        current = self.state.current
        if current is None or self.res.stopping:
            return
        self.res.save_child("starting")  # journaled first: a kill after the spawn finds it
        try:
            self.keeper.start(f"agent {current.version}", overlap=overlap,
                              deadline_s=deadline_s)
        except OSError as exc:
            log.error("cannot start agent %s: %s", self.s.agent_path, exc)
            if not self.s.agent_path.exists() and self._repair_missing_agent():
                return
            self._on_agent_exit(f"could not be started ({exc.strerror})", 0.0)
            return
        self.updates.child_started()
        self.res.save_child("running")

    def _repair_missing_agent(self) -> bool:
        """bin/agent was deleted under us: put back what the files allow (agent.old, the
        seed) or fetch the current release. True when the repair took over."""
        log.error("bin/agent is missing; repairing the installation")
        self.updates.end_trial()
        self.res.save(install.recover(self.state, self.s.bin_dir, self.res.shas))
        if self.state.current is None and self.s.seed_binary is not None:
            self.res.seed()
        if self.state.current is not None and self.s.agent_path.exists():
            self._start_agent()
            return True
        if self.s.manifest_url:
            log.info("nothing left to restore: installing the current release")
            self.checks.soon()
            return True
        return False

    def _on_agent_exit(self, words: str, ran_s: float) -> None:
        log.warning("agent %s %s after %.1fs", self.res.version(), words, ran_s)
        if self.updates.child_exited(words, ran_s):
            return
        delay = self.keeper.restart_after_crash(ran_s)
        log.warning("restarting agent %s in %.1fs (crash %d in a row)", self.res.version(),
                    delay, self.keeper.crashes)
        self.res.state = dataclasses.replace(self.state, extra={
            **self.state.extra, "last_agent_exit": f"{words} at {self.res.now_iso()}"})
        self.res.save_child("backoff")

    # ---- update checks ------------------------------------------------------------

    def _check_request(self) -> dict[str, Any]:
        return self.gate.request(checks.resident_request(self.s, self.state, self.res.env))

    def _on_scheduled(self, delay: float) -> None:
        self.res.save(dataclasses.replace(self.state, next_check_at=self.res.now_iso(delay)))

    def _on_result(self, r: checks.Result) -> None:
        if r.get("outcome") == "fault":  # power-loss tests, as PID 1: faults.worker_fault
            self.res.fault(str(r.get("point")))
        self.res.save(metrics.count_check(checks.record_check(
            checks.record(self.state, r, self.res.wall()), r, self.res.now_iso()), r,
            self.res.wall()))
        if self.gate.on_result(r):
            return
        if r.get("outcome") == "error":
            failures = self.state.consecutive_failures
            log.warning("check failed (%d in a row); the agent keeps running", failures)
            self.checks.schedule(self.checks.poll_delay(failures, checks.retry_after(r)))
        elif r.get("outcome") == "staged":
            self.updates.apply(Build(str(r["version"]), str(r["sha256"])), str(r["file"]))
        else:
            self.checks.schedule(0.0 if self.checks.take_recheck() else
                                 self.checks.poll_delay())

    def _command(self, request: dict[str, object]) -> dict[str, object]:
        if request.get("cmd") in controls.COMMANDS:
            return self.gate.command(request)
        return self.updates.command(request)
