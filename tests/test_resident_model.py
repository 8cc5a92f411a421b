"""The resident's keeper, trial and check runner under random event orders (hypothesis).

The real ``Supervisor`` runs in this process on a real state dir with real swaps and a real
journal; only processes, the health probe, the clock and the worker are simulated. Builds
are good (up and healthy), crashing (exit soon after start) or sick (up, never healthy).
Random orders of time passing, check results, crashes, operator rollbacks, unblocks, holds
and resumes, and a stop are checked against the invariants the issue names: never two
agents, never a good build marked bad, every trial ends, the host always has a next check,
and a held host never takes a staged build.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from launcher import controls, install
from launcher import settings as launcher_settings
from launcher.keeper import HANDOVER
from launcher.supervisor import Supervisor
from launcher.trial import HEALTH_GRACE_S, UNHEALTHY_PROBES
from launcher.updates import TICK

WINDOW = 2.0
CRASH_AFTER_S = 0.3
READY_AFTER_S = 0.1
_pids = itertools.count(4_000_000_000)  # never a real pid: nothing is ever signalled


class FakeProc:
    def __init__(self, build: str, now: float) -> None:
        self.pid = next(_pids)
        self.build = build
        self.started = now
        self.status: int | None = None

    def poll(self) -> int | None:
        return self.status

    @property
    def running(self) -> bool:
        return self.status is None

    def stop(self, grace_s: float) -> int:
        if self.status is None:
            self.status = signal.SIGTERM  # raw wait status of a SIGTERM death
        return self.status

    def send(self, sig: int) -> None:
        pass


def kind_of(build: str) -> str:
    return build.split(maxsplit=1)[0]


class ResidentModel(RuleBasedStateMachine):
    overlap = False
    extra: dict[str, str] = {}  # noqa: RUF012 (a class default, never mutated)

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="resident-model-"))
        self.now = 1000.0
        self.procs: list[FakeProc] = []
        self.check_due = False
        self.versions = itertools.count(1)
        self.crashed_by_us: set[str] = set()  # versions killed from outside during a trial
        self.trial_began: float | None = None
        seed = self.dir / "seed"
        seed.write_text("good 1.0.0\n")
        self.settings = launcher_settings.load({
            "state_dir": str(self.dir / "state"), "manifest_url": "http://127.0.0.1:9/v.json",
            "allow_http": True, "poll_interval": "1", "jitter": "0",
            "health_window": str(WINDOW), "health_url": "http://127.0.0.1:9/healthz",
            "seed_binary": str(seed), "platform": "linux-amd64", **self.extra}, environ={})
        # The simulated world needs no durability (test_durability and test_power_loss test
        # it for real): without fsync a run costs CPU, not the disk's flush queue.
        self.patches = [mock.patch("launcher.files.os.fsync", lambda fd: None),
                        # Simulated processes have no process groups: a sender is itself.
                        mock.patch("launcher.notifyd.belongs_to",
                                   lambda sender, agent: sender == agent),
                        mock.patch("launcher.health.probe", self.probe),
                        mock.patch("launcher.control.ControlServer",
                                   side_effect=OSError("not in the model"))]
        for p in self.patches:
            p.start()
        self.sup = self._launch()

    def _launch(self) -> Supervisor:
        """A launcher on the state dir, as ``run`` starts one (without signal handlers)."""
        sup = Supervisor(self.settings, environ={})
        sup.loop.timers.clock = sup.keeper.clock = lambda: self.now
        sup.res.reaper.reap = lambda: []  # type: ignore[method-assign]
        sup.keeper.spawn = self.spawn  # type: ignore[assignment]
        sup.keeper.leftovers = lambda group, tracked: []
        sup.res.shas = install.file_shas  # type: ignore[method-assign]
        sup.res.run = self.version_of  # type: ignore[method-assign]
        sup.res.compare = lambda a, b: (a > b) - (a < b)  # type: ignore[method-assign]
        sup.checks._start = self.worker_started  # type: ignore[method-assign]
        self.check_due = False
        sup._start()
        return sup

    def _close(self) -> None:
        self.sup.handoff.close()
        self.sup.res.reaper.close()
        self.sup.loop.close()

    def teardown(self) -> None:
        for p in self.patches:
            p.stop()
        self._close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the simulated world -----------------------------------------------------------

    def spawn(self, label: str, argv: list[str], env: Any, reaper: Any) -> FakeProc:
        proc = FakeProc(Path(argv[0]).read_text().strip(), self.now)
        self.procs.append(proc)
        return proc

    def version_of(self, argv: list[str]) -> tuple[int, str]:
        return 0, Path(argv[0]).read_text().split()[1] + "\n"

    def probe(self, url: str, timeout_s: float = 1.0) -> bool:
        alive = [p for p in self.procs if p.running]
        return bool(alive) and kind_of(alive[0].build) == "good"

    def notify(self) -> None:
        """What the agents say over their notify socket (nothing, in the default mode)."""

    def worker_started(self) -> None:
        self.check_due = True

    def alive(self) -> list[FakeProc]:
        return [p for p in self.procs if p.running]

    @property
    def running(self) -> bool:
        return self.sup.exit_code is None

    # ---- rules --------------------------------------------------------------------------

    @precondition(lambda self: self.running)
    @rule(dt=st.sampled_from([0.05, 0.2, 0.5, 1.0, 3.0]))
    def time_passes(self, dt: float) -> None:
        end = self.now + dt
        while self.running:
            step = self.sup.loop.timers.timeout()
            crash_at = [p.started + CRASH_AFTER_S for p in self.alive()
                        if kind_of(p.build) == "crash"]
            nxt = min([end, *([self.now + step] if step is not None else []), *crash_at])
            self.now = max(self.now, nxt)
            for p in self.alive():
                if kind_of(p.build) == "crash" and self.now >= p.started + CRASH_AFTER_S:
                    p.status = 1 << 8  # exited 1
            self.notify()
            self.sup.loop.dispatch()
            if self.now >= end:
                break

    @precondition(lambda self: self.running and self.check_due)
    @rule(kind=st.sampled_from(["good", "crash", "sick"]))
    def a_new_build_is_staged(self, kind: str) -> None:
        self.check_due = False
        version = f"2.{next(self.versions)}.0"
        body = f"{kind} {version}\n".encode()
        name = f".agent.download-{version}"
        (self.sup.s.bin_dir / name).write_bytes(body)
        held, before = controls.hold_of(self.sup.state) is not None, self.sup.state.current
        self.sup._on_result({"outcome": "staged", "version": version, "file": name,
                             "sha256": hashlib.sha256(body).hexdigest()})
        if held:
            assert self.sup.state.current == before and self.sup.state.phase != "trial"
            assert not (self.sup.s.bin_dir / name).exists()
        self.sup.loop.dispatch()

    @precondition(lambda self: self.running and self.check_due)
    @rule(outcome=st.sampled_from(["none", "not_modified", "error"]))
    def a_check_finds_nothing(self, outcome: str) -> None:
        self.check_due = False
        self.sup._on_result({"outcome": outcome, "error": "transport: down"})

    @precondition(lambda self: self.running and bool(self.alive()))
    @rule(status=st.sampled_from([1 << 8, 0, signal.SIGKILL, signal.SIGSEGV,
                                  signal.SIGRTMIN + 3, signal.SIGRTMAX]))
    def the_agent_dies(self, status: int) -> None:
        proc = self.alive()[0]
        if self.sup.state.phase == "trial":
            self.crashed_by_us.add(proc.build.split()[1])
        proc.status = status
        self.sup.loop.dispatch()

    @precondition(lambda self: self.running)
    @rule()
    def the_operator_rolls_back(self) -> None:
        answer = self.sup.updates.command({"cmd": "rollback"})
        assert answer["ok"] or answer.get("refused"), answer

    @precondition(lambda self: self.running and bool(self.sup.state.bad))
    @rule(data=st.data())
    def the_operator_unblocks(self, data: st.DataObject) -> None:
        bad = data.draw(st.sampled_from([b.version for b in self.sup.state.bad]))
        assert self.sup.updates.command({"cmd": "unblock", "version": bad})["ok"]

    @precondition(lambda self: self.running)
    @rule(cmd=st.sampled_from(["hold", "resume"]))
    def the_operator_holds_or_resumes(self, cmd: str) -> None:
        assert self.sup._command({"cmd": cmd, "by": "model"})["ok"]

    @precondition(lambda self: self.running)
    @rule()
    def sigterm(self) -> None:
        self.sup._on_signal(signal.SIGTERM)
        assert self.sup.exit_code == 0
        assert not self.alive()

    @precondition(lambda self: not self.running)
    @rule()
    def the_launcher_starts_again(self) -> None:
        self._close()
        self.sup = self._launch()

    # ---- invariants -----------------------------------------------------------------

    @invariant()
    def never_two_agents(self) -> None:
        """One agent, or the deliberate overlap pair: the keeper's child and outgoing."""
        alive = self.alive()
        keeper = self.sup.keeper
        assert len(alive) <= (2 if self.overlap else 1), [p.build for p in alive]
        for p in alive:
            assert p is keeper.child or p is keeper.outgoing, "an agent nobody tracks"
        if len(alive) == 2:
            assert keeper.child is not None and keeper.outgoing is not None

    @invariant()
    def never_a_good_build_marked_bad(self) -> None:
        for b in self.sup.state.bad:
            build = next((p.build for p in self.procs if p.build.split()[1] == b.version), "")
            if kind_of(build) == "good" and b.version not in self.crashed_by_us:
                assert "operator" in b.reason, b

    @invariant()
    def every_trial_ends(self) -> None:
        sup = self.sup
        if not self.running or sup.state.phase != "trial":
            self.trial_began = None
            return
        assert sup.updates.judge is not None and sup.keeper.running
        assert sup.loop.timers.pending(TICK), "a trial with nothing to move it on"
        if self.trial_began is None:
            self.trial_began = self.now
        tick = sup.updates.judge.tick_interval_s()
        bound = WINDOW + min(HEALTH_GRACE_S, WINDOW) + (UNHEALTHY_PROBES + 2) * tick \
            + (HEALTH_GRACE_S + READY_AFTER_S if self.overlap else 0.0)  # READY=1 deadline
        assert self.now - self.trial_began <= bound

    @invariant()
    def the_host_stays_updatable(self) -> None:
        if self.running and self.sup.state.phase != "trial":
            assert self.sup.checks.scheduled or self.check_due

    @invariant()
    def the_journal_agrees_with_the_files(self) -> None:
        state, bin_dir = self.sup.state, self.sup.s.bin_dir
        agent_sha, old_sha = install.file_shas([bin_dir / "agent", bin_dir / "agent.old"])
        assert state.current is not None and state.current.sha256 == agent_sha
        if state.previous is not None:
            assert state.previous.sha256 == old_sha
        child = self.sup.keeper.child
        if self.running and child is not None and child.running:
            assert child.build.split()[1] == state.current.version  # type: ignore[attr-defined]


def _runs(examples: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# The main suite's share: 80 runs of 40 steps (about 35 s on an idle machine); --run-slow
# adds 400 more. Both get their own timeout, since a loaded machine may take three times as long.
@pytest.mark.timeout(600)
class TestResidentModel(ResidentModel.TestCase):  # type: ignore[misc,valid-type]
    settings = _runs(80)


@pytest.mark.slow
@pytest.mark.timeout(1800)
class TestResidentModelLong(ResidentModel.TestCase):  # type: ignore[misc,valid-type]
    settings = _runs(400)


class OverlapModel(ResidentModel):
    """The same world with ``--ready notify --handover overlap``: good and sick builds send
    READY=1 shortly after their start, crashing and mute ones never do. The old agent may
    run beside the new one only as the keeper's outgoing agent, and a build that never
    becomes ready is rolled back with the old agent still running."""

    overlap = True
    extra = {"ready": "notify", "handover": "overlap", "agent_watchdog": "0"}  # noqa: RUF012

    def __init__(self) -> None:
        self.told: set[int] = set()
        super().__init__()

    def _launch(self) -> Supervisor:
        (self.dir / "state" / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
        return super()._launch()

    def notify(self) -> None:
        for p in self.alive():
            if p.pid not in self.told and kind_of(p.build) in ("good", "sick") \
                    and self.now >= p.started + READY_AFTER_S:
                self.told.add(p.pid)
                self.sup.updates.on_notify(p.pid, {"READY": "1"})

    @precondition(lambda self: self.running and self.check_due)
    @rule()
    def a_mute_build_is_staged(self) -> None:
        """Up, but never sends READY=1."""
        self.a_new_build_is_staged("mute")

    @invariant()
    def a_never_ready_build_never_stopped_the_old_one(self) -> None:
        keeper = self.sup.keeper
        if keeper.outgoing is not None:
            assert not keeper.ready
            assert keeper.outgoing.running
            # Something ends the pair: the trial's verdict or the hand-over's deadline.
            on_trial = self.sup.state.phase == "trial" and self.sup.updates.judge is not None
            assert on_trial or self.sup.loop.timers.pending(HANDOVER), "a pair nothing ends"


@pytest.mark.timeout(600)
class TestOverlapModel(OverlapModel.TestCase):  # type: ignore[misc,valid-type]
    settings = _runs(30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
class TestOverlapModelLong(OverlapModel.TestCase):  # type: ignore[misc,valid-type]
    settings = _runs(200)


def test_an_update_during_a_rollback_hand_over_keeps_the_restored_agent() -> None:
    """Found by the overlap model once hold/resume joined it: a build applied while a
    rolled-back agent still served beside the restored one replaced the restored agent and
    kept the failed one, which the next rollback then took back as the current agent."""
    model = OverlapModel()
    try:
        model.the_agent_dies(1 << 8)
        model.check_due = True
        model.a_mute_build_is_staged()  # 2.1.0 on trial beside 1.0.0
        model.the_operator_rolls_back()  # 1.0.0 restored; 2.1.0 serves until it is ready
        assert model.sup.keeper.outgoing is not None
        model.check_due = True
        model.a_mute_build_is_staged()  # 2.2.0 applied during that hand-over
        assert [p.build for p in model.alive()] == ["good 1.0.0", "mute 2.2.0"]
        model.the_operator_rolls_back()
        model.the_journal_agrees_with_the_files()
        assert [p.build for p in model.alive()] == ["good 1.0.0"]
    finally:
        model.teardown()
