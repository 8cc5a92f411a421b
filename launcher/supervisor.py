"""The resident loop: keeps the agent alive, runs checks in workers, swaps, trials, rolls back.

Single-threaded and event-driven: it sleeps in ``select`` until a signal (through the
reaper's wakeup fd), a worker's output, a control connection or the next timer, so an
idle launcher wakes only for its poll timer. Signal handlers only record; this loop acts.
Imports the standard library and psutil only; HTTP and parsing live in ``worker``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import selectors
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from launcher import control, faults, health, install, policy
from launcher.child import Child, PipedChild, agent_environ, child_environ, run_capture
from launcher.errors import ConfigError, HostError
from launcher.journal import (
    Build,
    ChildInfo,
    Staged,
    State,
    TolerantJournal,
    Trial,
    check_request,
    new_state,
    record_check,
    utc_iso,
)
from launcher.lock import StateLock
from launcher.reaper import Reaper, decode_status
from launcher.sdnotify import Notifier
from launcher.settings import Settings

log = logging.getLogger(__name__)

EXIT_SWAPPED = 100
MAX_TRIAL_RESTARTS = 2  # container restarts during a trial, beyond the one the swap asks for
TERMINATION_LOG = Path("/dev/termination-log")
STABLE_RUN_S = 60.0  # a child up this long resets the crash backoff
HEALTH_GRACE_S = 10.0  # least time a (re)started trial child gets to answer its health URL
UNHEALTHY_PROBES = 3  # consecutive failed probes after a healthy one fail the trial
WORKER_GRACE_S = 2.0


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
        self.s = settings
        self.config_file = config_file.resolve() if config_file is not None else None
        self.reload = reload
        self.watcher: PipedChild | None = None  # the file watcher: same plumbing as a worker
        self.watcher_restart_at: float | None = None
        self.recheck = False
        self.rng = rng or random.Random()
        self.wall = wall
        self.env = dict(os.environ if environ is None else environ)
        self.fault = fault if fault is not None else faults.resident_hook(self.env)
        self.container = settings.container(self.env)
        self.journal = TolerantJournal(settings.state_dir)
        self.lock = StateLock(settings.state_dir)
        self.reaper = Reaper()
        self.notify = Notifier(self.env)
        self.watchdog_s = self.notify.watchdog_interval_s()
        self.watchdog_at: float | None = None
        self.sel = selectors.DefaultSelector()
        self.state = new_state()
        self.child: Child | None = None
        self.child_build: Build | None = None  # the build the running child was started from
        self.worker: PipedChild | None = None
        self.control: control.ControlServer | None = None
        self.stopping = False
        self.exit_code: int | None = None
        self.crashes = 0
        # Bumped whenever what a check decides on changes under it (bad list, installed
        # build): a result from an older epoch is not trusted with validators.
        self.epoch = 0
        self.next_check: float | None = None
        self.restart_at: float | None = None
        self.tick_at: float | None = None
        self.trial_base_s = 0.0
        self.probe_failures = 0
        self.last_probe_ok = False

    # ---- life cycle -------------------------------------------------------------

    def run(self) -> int:
        """Supervise until asked to stop; returns the process exit code."""
        try:
            self.s.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create state directory {self.s.state_dir}: "
                              f"{exc.strerror}") from exc
        self.lock.acquire()
        try:
            self.reaper.install()
            self.sel.register(self.reaper.wakeup_fd, selectors.EVENT_READ, "wakeup")
            self._start()
            self.notify.ready(self._describe())
            if self.watchdog_s:
                self.watchdog_at = time.monotonic() + self.watchdog_s
            while self.exit_code is None:
                self._turn()
            return self.exit_code
        finally:
            self._shutdown()
            self.lock.release()

    def _start(self) -> None:
        log.info("launcher starting (pid %d, state %s, mode %s, platform %s)",
                 os.getpid(), self.s.state_dir, "container" if self.container else "standalone",
                 self.s.platform)
        stored = self.journal.load()
        state = install.recover(stored or new_state(), self.s.bin_dir, self._shas)
        self.state = self._save(dataclasses.replace(state, launcher_pid=os.getpid(), extra={
            **state.extra, "signatures": self.s.signatures}))
        if self.state.current is not None and self.state.current.version == "unknown":
            self._learn_version()
        if self.s.seed_binary is not None:
            self._seed(self.s.seed_binary)
        try:
            self.control = control.ControlServer(self.s.state_dir, self._on_command)
            self.sel.register(self.control.sock, selectors.EVENT_READ, "control")
        except OSError as exc:
            log.warning("control socket unavailable (%s); rollback/unblock need the launcher "
                        "stopped", exc)
        self._start_watcher()
        if self.state.phase == "trial":
            self._resume_trial()
        if self.state.current is not None and self.child is None and self.restart_at is None:
            self._start_child()
        if not self.s.manifest_url:
            if self.state.current is None:
                raise ConfigError("nothing to run: give --manifest-url or --seed-binary")
            log.info("no --manifest-url: supervising only, no update checks")
        elif self.state.phase != "trial":
            delay = policy.first_poll_delay(self.s.poll_interval_s, self.s.jitter_s, self.rng,
                                            installed=self.state.current is not None)
            self._schedule_check(delay)

    def _resume_trial(self) -> None:
        trial = self.state.trial
        assert trial is not None
        if self.container:
            # The first start after our own exit 100 is expected; more mean the container
            # itself keeps dying (OOM, liveness probe) while this build is on trial.
            trial = dataclasses.replace(trial, container_restarts=trial.container_restarts + 1)
            self.state = self._save(dataclasses.replace(self.state, trial=trial))
            extra = trial.container_restarts - 1
            if extra > MAX_TRIAL_RESTARTS:
                self._rollback(f"container restarted {extra} times during the trial")
                return
        log.info("resuming the trial of %s: %.1fs of %.1fs done", trial.build.version,
                 trial.run_time_s, self.s.health_window_s)

    def _shutdown(self) -> None:
        self._stop_watcher()
        self._stop_worker()
        if self.child is not None and self.child.running:
            self._stop_child()
        if self.control is not None:
            self.control.close()
        self.reaper.uninstall()
        self.reaper.close()
        self.sel.close()

    # ---- the loop ---------------------------------------------------------------

    def _turn(self) -> None:
        timeout = self._timeout()
        for key, _ in self.sel.select(timeout):
            if key.data == "wakeup":
                self.reaper.drain_wakeup()
            elif key.data == "worker" and self.worker is not None:
                self.worker.read()
            elif key.data == "watch":
                self._read_watcher()
            elif key.data == "control" and self.control is not None:
                self.control.accept()
        self.reaper.reap()
        while self.reaper.signals and self.exit_code is None:
            self._on_signal(self.reaper.signals.popleft())
        if self.exit_code is not None:
            return
        if self.child is not None and (status := self.child.poll()) is not None:
            self._on_child_exit(status)
        if self.worker is not None and self.worker.eof and self.worker.proc.poll() is not None:
            self._on_worker_done()
        if self.watcher is not None and self.watcher.proc.poll() is not None:
            self._on_watcher_exit()
        keep = ({p.proc.pid for p in (self.worker, self.watcher) if p}
                | {c.pid for c in [self.child] if c})
        self.reaper.forget_others(keep)
        self._run_timers()

    def _timeout(self) -> float | None:
        deadlines = [t for t in (self.next_check, self.restart_at, self.tick_at, self.watchdog_at,
                                 self.watcher_restart_at) if t is not None]
        if self.worker is not None:
            deadlines.append(self.worker.proc.started + self._worker_limit_s())
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        if self.watcher_restart_at is not None and now >= self.watcher_restart_at:
            self.watcher_restart_at = None
            self._start_watcher()
        if self.watchdog_at is not None and now >= self.watchdog_at and self.watchdog_s:
            self.notify.watchdog()
            self.watchdog_at = now + self.watchdog_s
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._start_child()
        if self.tick_at is not None and now >= self.tick_at:
            self._trial_tick()
        if self.next_check is not None and now >= self.next_check and self.worker is None:
            self.next_check = None
            if self.state.phase == "trial":
                log.info("check deferred until the trial of %s ends", self._version())
            else:
                self._start_worker()
        if self.worker is not None:
            limit = self._worker_limit_s()
            if now - self.worker.proc.started > limit and self.worker.proc.running:
                log.error("update check ran past %.0fs; stopping it", limit)
                self.worker.proc.stop(WORKER_GRACE_S)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s: stopping", name)
            self._requested_stop()
        elif self.child is not None and self.child.running:
            log.info("forwarding %s to the agent (pid %d)", name, self.child.pid)
            self.child.send(signum)

    def _requested_stop(self) -> None:
        self.stopping = True
        self.notify.stopping()
        self._stop_worker()
        code = 0
        if self.child is not None and self.child.running:
            status = self._stop_child()
            exit_code, _ = decode_status(status)
            if exit_code not in (0, 128 + signal.SIGTERM):
                code = exit_code
        self._save_child("stopped")
        self.exit_code = code

    # ---- the agent child ----------------------------------------------------------

    def _agent_argv(self) -> list[str]:
        return [str(self.s.agent_path), *self.s.agent_args]

    def _start_child(self) -> None:
        current = self.state.current
        assert current is not None
        try:
            self.child = Child.start(f"agent {current.version}", self._agent_argv(),
                                     agent_environ(self.env), self.reaper)
        except OSError as exc:
            log.error("cannot start agent %s: %s", self.s.agent_path, exc)
            self.child = None
            if not self.s.agent_path.exists() and self._repair_missing_agent():
                return
            self._after_child_end(f"could not be started ({exc.strerror})", ran_s=0.0)
            return
        self.child_build = current
        self.probe_failures = 0
        self.last_probe_ok = False
        if self.state.phase == "trial":
            trial = self.state.trial
            assert trial is not None
            self.trial_base_s = trial.run_time_s
            self.tick_at = time.monotonic() + self._tick_interval()
        self._save_child("running")

    def _repair_missing_agent(self) -> bool:
        """bin/agent was deleted under us: put back what the files allow (agent.old, the
        seed) or fetch the current release. True when the repair took over."""
        log.error("bin/agent is missing; repairing the installation")
        self.tick_at = None
        self.state = self._save(install.recover(self.state, self.s.bin_dir, self._shas))
        if self.state.current is None and self.s.seed_binary is not None:
            self._seed(self.s.seed_binary)
        if self.state.current is not None and self.s.agent_path.exists():
            self._start_child()
            return True
        if self.s.manifest_url:
            log.info("nothing left to restore: installing the current release")
            self._check_soon()
            return True
        return False

    def _stop_child(self) -> int:
        assert self.child is not None
        self._persist_trial_time()
        status = self.child.stop(self.s.stop_grace_s)
        return status

    def _on_child_exit(self, status: int) -> None:
        assert self.child is not None
        ran_s = time.monotonic() - self.child.started
        _, words = decode_status(status)
        self.child = None
        log.warning("agent %s %s after %.1fs", self._version(), words, ran_s)
        self._after_child_end(words, ran_s)

    def _after_child_end(self, words: str, ran_s: float) -> None:
        if self.state.phase == "trial":
            self.tick_at = None
            run = self._trial_run_time(ran_s)
            self._rollback(f"agent {words} after {run:.1f}s of its "
                           f"{self.s.health_window_s:g}s health window")
            return
        self.crashes = 1 if ran_s >= STABLE_RUN_S else self.crashes + 1
        delay = policy.crash_restart_delay(self.crashes)
        log.warning("restarting agent %s in %.1fs (crash %d in a row)", self._version(), delay,
                    self.crashes)
        self.restart_at = time.monotonic() + delay
        self.state = dataclasses.replace(self.state, extra={
            **self.state.extra, "last_agent_exit": f"{words} at {utc_iso(self.wall())}"})
        self._save_child("backoff")

    def _describe(self) -> str:
        """One line for systemd's STATUS=: what runs and in which phase."""
        child = self.state.child
        what = f"agent {self._version()} {child.state if child else 'not started'}"
        if self.state.phase == "trial":
            what += " (on trial)"
        if self.state.last_error:
            what += f"; last check failed: {self.state.last_error}"
        return what

    def _version(self) -> str:
        return self.state.current.version if self.state.current else "?"

    def _save_child(self, what: str) -> None:
        pid = self.child.pid if self.child is not None and what == "running" else None
        info = ChildInfo(pid=pid, version=self._version(), state=what, since=utc_iso(self.wall()))
        self.state = self._save(dataclasses.replace(self.state, child=info))
        self.notify.status(self._describe())

    # ---- trial ------------------------------------------------------------------

    def _tick_interval(self) -> float:
        return min(2.0, max(0.2, self.s.health_window_s / 10))

    def _trial_run_time(self, ran_s: float | None = None) -> float:
        if ran_s is None:
            ran_s = time.monotonic() - self.child.started if self.child else 0.0
        return self.trial_base_s + ran_s

    def _persist_trial_time(self) -> None:
        trial = self.state.trial
        if (self.state.phase == "trial" and trial is not None and self.child is not None
                and self.child_build == trial.build):
            trial = dataclasses.replace(trial, run_time_s=self._trial_run_time())
            self.state = self._save(dataclasses.replace(self.state, trial=trial))

    def _trial_tick(self) -> None:
        self.tick_at = None
        if self.child is None or not self.child.running or self.state.trial is None:
            return
        trial = self.state.trial
        if self.s.health_url:
            ok = health.probe(self.s.health_url)
            self.last_probe_ok = ok
            if ok:
                self.probe_failures = 0
                if not trial.healthy_seen:
                    log.info("agent %s answers %s", trial.build.version, self.s.health_url)
                    trial = dataclasses.replace(trial, healthy_seen=True)
            else:
                self.probe_failures += 1
                if trial.healthy_seen and self.probe_failures >= UNHEALTHY_PROBES:
                    self._fail_trial(f"agent stopped answering {self.s.health_url} "
                                     f"({self.probe_failures} failed probes)")
                    return
        run = self._trial_run_time()
        trial = dataclasses.replace(trial, run_time_s=run)
        self.state = self._save(dataclasses.replace(self.state, trial=trial))
        if run >= self.s.health_window_s:
            if self.s.health_url and not self.last_probe_ok:
                # A child restarted late in its window (the launcher was restarted) gets a
                # fair chance to come up before its health is judged.
                age = time.monotonic() - self.child.started
                if age < min(self.s.health_window_s, HEALTH_GRACE_S):
                    self.tick_at = time.monotonic() + self._tick_interval()
                    return
                what = "was not healthy at the end of" if trial.healthy_seen else "never answered"
                self._fail_trial(f"agent {what} {self.s.health_url} "
                                 f"during its {self.s.health_window_s:g}s health window")
                return
            self._commit()
            return
        remaining = self.s.health_window_s - run
        self.tick_at = time.monotonic() + min(self._tick_interval(), remaining)

    def _fail_trial(self, reason: str) -> None:
        self.tick_at = None
        self._rollback(reason)  # stops the child first

    def _commit(self) -> None:
        trial = self.state.trial
        assert trial is not None
        self._fault("trial.passed")
        self.state = self._save(dataclasses.replace(self.state, phase="committed", trial=None))
        self._fault("committed")
        log.info("update to %s committed after %.1fs healthy", trial.build.version,
                 trial.run_time_s)
        self.crashes = 0
        self._save_child("running")
        if self.s.manifest_url:
            self._schedule_check(self._poll_delay())

    def _rollback(self, reason: str) -> None:
        """Put ``agent.old`` back in place, mark the failed build bad, restart the agent."""
        failed = self.state.current
        target = self.state.previous
        assert failed is not None
        if self.child is not None and self.child.running:
            self._stop_child()
        self.child = None
        self.epoch += 1
        self.state, ok = control.rollback(self.state, self.s.bin_dir, self.journal, reason,
                                          utc_iso(self.wall()), self.fault)
        if not ok:
            log.error("cannot roll back from %s: no previous build (%s); keeping it under "
                      "crash backoff", failed.version, reason)
            self.state = self._save(dataclasses.replace(
                self.state.with_bad(failed, reason, utc_iso(self.wall())), phase="committed",
                trial=None))
            self._after_child_end("failed its trial", 0.0)
            return
        assert target is not None
        log.error("rolled back to %s: %s %s", target.version, failed.label(), reason)
        self.crashes = 0
        self._start_child()
        if self.s.manifest_url:
            self._schedule_check(self._poll_delay())

    # ---- update checks ------------------------------------------------------------

    def _python_env(self) -> dict[str, str]:
        """Environment for our own Python helpers: finds this launcher package first."""
        env = child_environ(self.env)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        return env

    def _spawn_helper(self, name: str, module_args: list[str], tag: str,
                      stdin: bytes | None = None) -> PipedChild:
        """Start ``python -m MODULE ARGS`` with ``stdin`` (or nothing) as its input and its
        stdout read by the loop under ``tag``. Raises OSError when it cannot be started."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = Child.start(name, [sys.executable, "-m", *module_args], self._python_env(),
                               self.reaper, stdin_fd=in_r, stdout_fd=out_w)
        except OSError:
            os.close(out_r)
            os.close(in_w)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        with os.fdopen(in_w, "wb") as pipe:  # small: fits the pipe; closing sends EOF
            pipe.write(stdin or b"")
        return PipedChild(proc, out_r, self.epoch, self.sel, tag)

    def _worker_limit_s(self) -> float:
        return self.s.download_deadline_s + 120.0

    def _schedule_check(self, delay: float) -> None:
        self.next_check = time.monotonic() + delay
        self.state = self._save(dataclasses.replace(
            self.state, next_check_at=utc_iso(self.wall() + delay)))
        log.info("next check in %.1fs", delay)

    def _start_worker(self) -> None:
        request = check_request(self.s.for_worker(), self.state, stage=True, conditional=True)
        try:
            self.worker = self._spawn_helper("update check", ["launcher.worker"], "worker",
                                             stdin=json.dumps(request).encode())
        except OSError as exc:
            self._on_result({"outcome": "error", "error": HostError(
                f"cannot start an update check: {exc.strerror or exc}").describe()})

    def _close_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def _stop_worker(self) -> None:
        """End a check in flight; what it was downloading is removed."""
        if self.worker is not None:
            self.worker.proc.stop(WORKER_GRACE_S)
            self._close_worker()
            install.clean_temp_files(self.s.bin_dir)

    def _on_worker_done(self) -> None:
        assert self.worker is not None
        status = self.worker.proc.poll()
        assert status is not None
        raw = bytes(self.worker.buf)
        stale = self.worker.epoch != self.epoch
        self._close_worker()
        try:
            result = json.loads(raw.splitlines()[-1]) if raw.strip() else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            _, words = decode_status(status)
            result = {"outcome": "error", "error": f"worker: update check {words} "
                      "without a result"}
            install.clean_temp_files(self.s.bin_dir)
        if result.get("outcome") == "fault":  # power-loss tests, as PID 1: faults.worker_fault
            self._fault(str(result.get("point")))
        if stale and result.get("outcome") != "error":
            log.info("discarding a check result that predates an operator command; "
                     "checking again")
            install.clean_temp_files(self.s.bin_dir)
            self._schedule_check(0.0)
            return
        self._on_result(result)

    def _on_result(self, r: dict[str, object]) -> None:
        now_iso = utc_iso(self.wall())
        outcome = r.get("outcome")
        st = record_check(dataclasses.replace(self.state, last_check_at=now_iso), r, now_iso)
        if outcome == "error":
            failures = st.consecutive_failures + 1
            self.state = self._save(dataclasses.replace(
                st, consecutive_failures=failures, last_error=str(r.get("error")),
                etag=None, last_modified=None))
            retry = r.get("retry_after_s")
            retry_s = float(retry) if isinstance(retry, int | float) else None
            delay = self._poll_delay(failures, retry_s)
            log.warning("check failed (%d in a row); the agent keeps running", failures)
            self._schedule_check(delay)
            return
        # Validators are kept only once nothing is left to do with this manifest: after a
        # staged build they stay empty, so a swap that is interrupted, fails or is rolled
        # back is re-decided on a full fetch.
        staged = outcome == "staged"
        st = dataclasses.replace(st, consecutive_failures=0, last_error=None,
                                 etag=None if staged else _str(r.get("etag")),
                                 last_modified=None if staged else _str(r.get("last_modified")))
        if isinstance(r.get("version"), str):
            st = dataclasses.replace(st, extra={**st.extra, "last_seen_version": r["version"]})
        self.state = self._save(st)
        if staged:
            build = Build(str(r["version"]), str(r["sha256"]))
            self._apply(build, str(r["file"]))
            return
        self._schedule_check(0.0 if self._take_recheck() else
                             self._poll_delay())

    def _take_recheck(self) -> bool:
        recheck, self.recheck = self.recheck, False
        return recheck

    # ---- watched files: a file:// manifest, the config file ------------------------------

    def _watch_paths(self) -> list[str]:
        paths = []
        url = self.s.manifest_url or ""
        if url.startswith("file://"):
            paths.append(str(Path(urlsplit(url).path).resolve()))
        if self.config_file is not None and self.reload is not None:
            paths.append(str(self.config_file))
        return paths

    def _start_watcher(self) -> None:
        paths = self._watch_paths()
        if not paths or self.stopping:
            return
        try:
            self.watcher = self._spawn_helper("file watcher", ["launcher.watch", *paths],
                                              "watch")
        except OSError as exc:
            log.warning("cannot start the file watcher (%s); changes are seen at the next "
                        "poll", exc)

    def _stop_watcher(self) -> None:
        if self.watcher is None:
            return
        self.watcher.proc.stop(WORKER_GRACE_S)
        self.watcher.close()
        self.watcher = None

    def _read_watcher(self) -> None:
        assert self.watcher is not None
        self.watcher.read()
        *lines, rest = bytes(self.watcher.buf).split(b"\n")
        self.watcher.buf = bytearray(rest)
        for line in lines:
            self._on_file_changed(line.decode(errors="replace").strip())

    def _on_watcher_exit(self) -> None:
        assert self.watcher is not None
        status = self.watcher.proc.poll()
        assert status is not None
        self.watcher.close()
        self.watcher = None
        if not self.stopping:
            log.warning("file watcher %s; restarting it in 5s", decode_status(status)[1])
            self.watcher_restart_at = time.monotonic() + 5.0

    def _on_file_changed(self, path: str) -> None:
        if self.config_file is not None and path == str(self.config_file):
            self._reload_settings()
        elif path in self._watch_paths():
            log.info("%s changed: checking now", path)
            self._check_soon()

    def _check_soon(self) -> None:
        if self.worker is not None:
            self.recheck = True
        elif self.state.phase != "trial" and self.s.manifest_url:
            self._schedule_check(0.0)

    def _reload_settings(self) -> None:
        assert self.reload is not None
        try:
            new = self.reload()
        except ConfigError as exc:
            log.error("config reload refused, keeping the running settings: %s", exc)
            return
        fixed = {"state_dir": self.s.state_dir, "mode": self.s.mode}
        for name, value in fixed.items():
            if getattr(new, name) != value:
                log.warning("config: %s changes only at the next start", name)
        new = dataclasses.replace(new, **fixed)  # type: ignore[arg-type]
        changed = [f.name for f in dataclasses.fields(Settings)
                   if getattr(new, f.name) != getattr(self.s, f.name)]
        if not changed:
            return
        log.info("config reloaded: %s changed", ", ".join(changed))
        old_paths = self._watch_paths()
        source_changed = new.manifest_url != self.s.manifest_url
        self.s = new
        if source_changed:
            self.epoch += 1
            self.state = self._save(dataclasses.replace(self.state, etag=None,
                                                        last_modified=None))
        if self._watch_paths() != old_paths:
            self._stop_watcher()
            self._start_watcher()
        if not self.s.manifest_url:
            self.next_check = None
        elif self.worker is None and self.state.phase != "trial":
            delay = 0.0 if source_changed else self._poll_delay()
            self._schedule_check(delay)
        elif source_changed:
            self.recheck = True

    # ---- swap ---------------------------------------------------------------------

    def _apply(self, build: Build, staged_file: str) -> None:
        # Replacing nothing, or a build that cannot tell its version: no trial to run.
        first = self.state.current is None or self.state.current.version == "unknown"
        try:
            self.state = self.journal.save_strict(dataclasses.replace(
                self.state, phase="swapping", staged=Staged(build, staged_file)))
        except OSError as exc:
            log.error("cannot journal the swap to %s (%s); not swapping, will retry",
                      build.version, exc.strerror or exc)
            install.clean_temp_files(self.s.bin_dir)
            self.state = dataclasses.replace(self.state, last_error=HostError(
                f"cannot write the journal: {exc.strerror or exc}").describe())
            self._schedule_check(self._poll_delay(1))
            return
        self._fault("staged")
        try:
            install.swap_in(self.s.bin_dir, staged_file, self.fault)
        except OSError as exc:
            log.error("swap to %s failed: %s; keeping %s", build.version, exc, self._version())
            install.clean_temp_files(self.s.bin_dir)
            self.state = self._save(dataclasses.replace(
                self.state, phase="empty" if self.state.current is None else "committed",
                staged=None,
                last_error=HostError(f"swap failed: {exc}").describe()))
            self._schedule_check(self._poll_delay(1))
            return
        if first:
            if self.state.current is not None:  # an unidentifiable build: not worth keeping
                (self.s.bin_dir / install.OLD).unlink(missing_ok=True)
            self.state = self._save(dataclasses.replace(
                self.state, phase="committed", current=build, previous=None, staged=None))
            log.info("installed %s", build.version)
            if self.child is not None and self.child.running:
                self._stop_child()
            self._start_child()
            self._schedule_check(self._poll_delay())
            return
        self.state = self._save(dataclasses.replace(
            self.state, phase="trial", previous=self.state.current, current=build, staged=None,
            trial=Trial(build=build, started_at=utc_iso(self.wall()))))
        self._fault("swapped")
        log.info("swapped in %s; %s kept as agent.old", build.version,
                 self.state.previous.version if self.state.previous else "?")
        if self.child is not None and self.child.running:
            self._stop_child()
        self.child = None
        if self.container:
            message = (f"swapped in {build.version}; exiting {EXIT_SWAPPED} so the container "
                       "restarts on it")
            log.info("container mode: %s", message)
            with contextlib.suppress(OSError):
                if TERMINATION_LOG.exists():
                    TERMINATION_LOG.write_text(message + "\n")
            self.notify.stopping()
            self.exit_code = EXIT_SWAPPED
            return
        self.trial_base_s = 0.0
        self._start_child()
        self._fault("trial.started")

    # ---- operator commands ----------------------------------------------------------

    def _on_command(self, request: dict[str, object]) -> dict[str, object]:
        cmd = request.get("cmd")
        if cmd == "rollback":
            if self.state.previous is None:
                return {"ok": False, "error": "no agent.old to roll back to"}
            if self.state.current is None:
                return {"ok": False, "error": "no agent installed"}
            failed = self.state.current
            self.tick_at = None
            self._rollback("rolled back by the operator")
            return {"ok": True, "message": f"rolled back from {failed.version} to "
                    f"{self._version()}; {failed.version} is blocked until unblocked"}
        if cmd == "unblock":
            version = str(request.get("version"))
            self.epoch += 1
            self.state, n = control.unblock(self.state, version)
            self.state = self._save(self.state)
            return {"ok": True, "message": f"unblocked {n} build(s) of {version}"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    # ---- helpers ------------------------------------------------------------------

    def _poll_delay(self, failures: int = 0, retry_after_s: float | None = None) -> float:
        return policy.next_poll_delay(self.s.poll_interval_s, self.s.jitter_s, failures,
                                      retry_after_s, self.rng)

    def _save(self, state: State) -> State:
        return self.journal.save(state)

    def _fault(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    def _seed(self, seed: Path) -> None:
        """Install the seed (the image's build) when the state dir has none, or an older one.

        Idempotent: the same build is never copied twice, and a newer build staged on the
        volume by an earlier update is kept. A build on trial is left to its trial.
        """
        current = self.state.current
        (seed_sha,) = self._shas([seed])
        if seed_sha is None:
            raise ConfigError(f"--seed-binary {seed} does not exist")
        if current is not None and (current.sha256 == seed_sha or self.state.phase == "trial"):
            return  # already installed, or an update on trial is left to its trial
        code, out = run_capture([str(seed), "--version"], self.reaper)
        version = out.strip()
        if code != 0 or not version:
            raise ConfigError(f"--seed-binary {seed}: '--version' exited {code} and printed "
                              f"{version!r}; give a working agent build")
        if current is not None and current.version != "unknown":
            order = self._compare(version, current.version)
            if order is None or order <= 0:
                log.info("keeping %s from the state dir (seed is %s)", current.version, version)
                return
            log.info("seed binary %s is newer than the installed %s: installing it", version,
                     current.version)
        name = install.stage_copy(self.s.bin_dir, seed)
        (sha,) = self._shas([self.s.bin_dir / name])
        if sha != seed_sha:
            (self.s.bin_dir / name).unlink(missing_ok=True)
            raise HostError(f"copy of {seed} does not match its sha256; disk problem?")
        if current is None:
            os.replace(self.s.bin_dir / name, self.s.agent_path)
            previous = self.state.previous
        else:
            install.swap_in(self.s.bin_dir, name)
            previous = current if current.version != "unknown" else None
        log.info("installed seed binary %s as %s", seed, version)
        self.state = self._save(dataclasses.replace(
            self.state, phase="committed", current=Build(version, sha), previous=previous))

    def _shas(self, paths: Sequence[Path]) -> list[str | None]:
        """sha256 of files (None: missing), in one short-lived process (``launcher.oneshot``)."""
        code, out = run_capture(
            [sys.executable, "-m", "launcher.oneshot", "sha256", *map(str, paths)],
            self.reaper, timeout_s=120.0, env=self._python_env())
        digests = out.split()
        if code != 0 or len(digests) != len(paths) or any(
                d != "-" and len(d) != 64 for d in digests):
            raise HostError(f"cannot hash {', '.join(map(str, paths))}: the helper exited {code}")
        return [None if d == "-" else d for d in digests]

    def _compare(self, a: str, b: str) -> int | None:
        """Version order through ``launcher.oneshot`` (the resident imports no packaging)."""
        code, out = run_capture([sys.executable, "-m", "launcher.oneshot", "compare", a, b],
                                self.reaper, env=self._python_env())
        if code != 0:
            log.warning("cannot order versions %r and %r", a, b)
            return None
        return int(out.strip())

    def _learn_version(self) -> None:
        assert self.state.current is not None
        try:
            code, out = run_capture([str(self.s.agent_path), "--version"], self.reaper)
        except OSError:
            return
        if code == 0 and out.strip():
            self.state = self._save(dataclasses.replace(
                self.state, current=Build(out.strip(), self.state.current.sha256)))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
