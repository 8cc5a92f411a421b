"""SIGKILL of the launcher's whole tree at each step of an update or rollback, then a restart.

After the restart the invariants hold: ``bin/agent`` is a complete build we published,
the journal agrees with the files, no temp file is left, an agent answers, the bad list
lost nothing, a good build was never marked bad, and the pending update completes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Launcher, UpdateServer, fast_args, script_agent, wait_until


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_invariants(lch: Launcher, builds: dict[str, str]) -> dict[str, object]:
    """``builds`` maps sha256 → version of every build that was published."""
    st = lch.state()
    bin_dir = lch.state_dir / "bin"
    # A download cut by the kill leaves its partial for the next check (launcher.partial).
    names = sorted(p.name for p in bin_dir.iterdir() if not p.name.startswith(".agent.partial-"))
    assert set(names) <= {"agent", "agent.old"}, f"leftover files in bin/: {names}"
    agent_sha = sha(bin_dir / "agent")
    assert agent_sha in builds, "bin/agent is not a build we published"
    assert st["current"] == {"version": builds[agent_sha], "sha256": agent_sha}
    if (bin_dir / "agent.old").exists():
        old_sha = sha(bin_dir / "agent.old")
        assert old_sha in builds
        assert st["previous"]["sha256"] == old_sha
    else:
        assert st["previous"] is None
    assert st["phase"] in ("committed", "trial")
    return st


UPDATE_POINTS = ["downloaded", "staged", "swap.old_linked", "swap.renamed", "swapped",
                 "trial.started", "trial.passed", "committed"]


@pytest.mark.parametrize("point", UPDATE_POINTS)
def test_kill_during_update_then_restart_completes(
        point: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Killed at ``point`` of 0.1.0 → 0.1.1, the restarted launcher ends on 0.1.1 committed."""
    builds = {sha(build(v)): v for v in ("0.1.0", "0.1.1")}
    lch = launcher()
    args = [*fast_args(server, lch), "--seed-binary", str(build("0.1.0"))]
    lch.start(*args, env={"NGINX_MANAGER_FAULT_POINT": point})
    lch.wait_healthy("0.1.0")
    server.publish("0.1.1", build("0.1.1"))
    assert lch.proc is not None
    lch.proc.wait(30)
    assert f"fault point {point} reached" in lch.log() or point == "downloaded"
    lch.kill_tree()  # the agent child is gone with the rest: power loss

    lch.start(*args)
    lch.wait_state(lambda s: s.get("current", {}).get("version") == "0.1.1"
                   and s.get("phase") == "committed", timeout=30, what="0.1.1 committed")
    lch.wait_healthy("0.1.1")
    st = check_invariants(lch, builds)
    assert st["bad"] == []
    assert lch.stop() == 0


ROLLBACK_POINTS = ["rollback.journaled", "rollback.renamed"]


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_kill_during_rollback_then_restart_finishes_it(
        point: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path) -> None:
    """Killed mid-rollback of a crashing 0.1.2, the restart finishes it and keeps 0.1.2 bad."""
    crasher = script_agent(tmp_path / "crash", "0.1.2", "exit 1")
    builds = {sha(build("0.1.1")): "0.1.1", sha(crasher): "0.1.2"}
    lch = launcher()
    args = [*fast_args(server, lch), "--seed-binary", str(build("0.1.1"))]
    lch.start(*args, env={"NGINX_MANAGER_FAULT_POINT": point})
    lch.wait_healthy("0.1.1")
    server.publish("0.1.2", crasher)
    assert lch.proc is not None
    lch.proc.wait(30)
    lch.kill_tree()

    lch.start(*args)
    lch.wait_healthy("0.1.1")
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == "0.1.1", what="rollback finished")
    check_invariants(lch, builds)
    assert [b["version"] for b in st["bad"]] == ["0.1.2"]
    checks = lch.log().count("started update check")
    lch.wait_log("started update check", count=checks + 2)
    assert lch.state()["current"]["version"] == "0.1.1"
    assert lch.stop() == 0


# ---- container mode: the same points under the stand-in kubelet ----------------------------

# Points reached by the first container (before its exit 100) and by the one after it.
CONTAINER_BEFORE_SWAP = ["downloaded", "staged", "swap.old_linked", "swap.renamed", "swapped"]
CONTAINER_AFTER_SWAP = ["trial.passed", "committed"]
CONTAINER_DEFAULT = {"swap.renamed", "swapped", "committed", "rollback.renamed"}


def _container_param(point: str) -> object:
    marks = () if point in CONTAINER_DEFAULT else (pytest.mark.slow,)
    return pytest.param(point, marks=marks, id=point)


class _FaultOnce:
    """Stands in for ``os`` inside test_container so that only the ``nth`` container start
    carries the fault point: the kubelet's restart after the kill runs clean."""

    def __init__(self, kube_starts: Callable[[], int], nth: int, point: str) -> None:
        import os as real_os

        self._os = real_os
        self._starts = kube_starts
        self._nth = nth
        self._point = point

    @property
    def environ(self) -> dict[str, str]:
        env = dict(self._os.environ)
        if self._starts() == self._nth:
            env["NGINX_MANAGER_FAULT_POINT"] = self._point
        return env

    def __getattr__(self, name: str) -> object:
        return getattr(self._os, name)


def _pod(point: str, nth: int, seed: Path, server: UpdateServer, launcher: Callable[..., Launcher],
         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, Launcher]:
    """A pod whose launcher is PID 1 of each container and dies at ``point`` on start ``nth``."""
    import test_container

    probe = launcher()
    args = [*fast_args(server, probe), "--seed-binary", str(seed), "--",
            "run", "--health-addr", f"127.0.0.1:{probe.health_port}"]
    kube = test_container.Kubelet(tmp_path / "volume", args, tmp_path / "pod.log")
    monkeypatch.setattr(test_container, "os", _FaultOnce(lambda: kube.starts, nth, point))
    probe.log_path = kube.log_path
    probe.state_dir = kube.volume
    return kube, probe


@pytest.mark.parametrize("point", [_container_param(p) for p in
                                   CONTAINER_BEFORE_SWAP + CONTAINER_AFTER_SWAP])
def test_container_killed_during_update_then_restarted_completes(
        point: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    """In container mode, the pod killed at ``point`` of 0.1.0 → 0.1.1 and restarted by the
    kubelet ends on 0.1.1 committed, with at most the one exit 100 the swap asks for."""
    import test_container

    builds = {sha(build(v)): v for v in ("0.1.0", "0.1.1")}
    nth = 0 if point in CONTAINER_BEFORE_SWAP else 1
    kube, probe = _pod(point, nth, build("0.1.0"), server, launcher, tmp_path, monkeypatch)
    kubelets: list[test_container.Kubelet] = []
    try:
        assert isinstance(kube, test_container.Kubelet)
        kubelets.append(kube.start())
        probe.wait_healthy("0.1.0")
        server.publish("0.1.1", build("0.1.1"))
        wait_until(lambda: kube.starts >= nth + 2, 30, f"restart after the kill at {point}")
        st = probe.wait_state(lambda s: s.get("phase") == "committed"
                              and (s.get("current") or {}).get("version") == "0.1.1",
                              timeout=30, what="0.1.1 committed")
        probe.wait_healthy("0.1.1")
        if point != "downloaded":  # the worker's own kill does not log
            assert f"fault point {point} reached" in kube.log()
        assert kube.exits[nth] == 128 + 9, f"container {nth} was not killed: {kube.exits}"
        st = check_invariants(probe, builds)
        assert st["bad"] == []
        assert kube.exits.count(100) <= 1, kube.exits
        assert kube.delete_pod() == 0
    finally:
        for k in kubelets:
            k.deleting.set()
            if k.proc is not None and k.proc.poll() is None:
                k.proc.kill()
            k.thread.join(10)


@pytest.mark.parametrize("point", [_container_param(p) for p in ROLLBACK_POINTS])
def test_container_killed_during_rollback_then_restarted_finishes_it(
        point: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In container mode, killed mid-rollback of a crashing 0.1.2, the restarted container
    finishes the rollback in place and keeps 0.1.2 bad; no second exit 100."""
    import test_container

    crash = script_agent(tmp_path / "crash", "0.1.2", "exit 1")
    builds = {sha(build("0.1.1")): "0.1.1", sha(crash): "0.1.2"}
    kube, probe = _pod(point, 1, build("0.1.1"), server, launcher, tmp_path, monkeypatch)
    assert isinstance(kube, test_container.Kubelet)
    try:
        kube.start()
        probe.wait_healthy("0.1.1")
        server.publish("0.1.2", crash)
        wait_until(lambda: kube.starts >= 3, 30, f"restart after the kill at {point}")
        probe.wait_healthy("0.1.1")
        st = probe.wait_state(lambda s: s.get("phase") == "committed"
                              and s["current"]["version"] == "0.1.1", what="rollback finished")
        assert f"fault point {point} reached" in kube.log()
        assert kube.exits[:2] == [100, 128 + 9], kube.exits
        check_invariants(probe, builds)
        assert [b["version"] for b in st["bad"]] == ["0.1.2"]
        assert kube.exits.count(100) == 1, kube.exits
        assert kube.delete_pod() == 0
    finally:
        kube.deleting.set()
        if kube.proc is not None and kube.proc.poll() is None:
            kube.proc.kill()
        kube.thread.join(10)


def test_fault_hook_kills_a_pid1_launcher(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As PID 1 of a container, the launcher dies at its fault point like power loss."""
    import test_container

    kube, probe = _pod("swap.renamed", 0, build("0.1.0"), server, launcher, tmp_path,
                       monkeypatch)
    assert isinstance(kube, test_container.Kubelet)
    try:
        kube.start()
        probe.wait_healthy("0.1.0")
        server.publish("0.1.1", build("0.1.1"))
        wait_until(lambda: kube.exits, 30, "the first container to end")
        assert kube.exits[0] == 128 + 9, f"the launcher went on after its kill: {kube.exits}"
    finally:
        kube.deleting.set()
        if kube.proc is not None and kube.proc.poll() is None:
            kube.proc.kill()
        kube.thread.join(10)


# ---- a torn journal ---------------------------------------------------------------------------

TORN = {
    "truncated mid-write": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "zero-filled": lambda good: b"\0" * len(good),
    "garbage": lambda good: bytes(range(256)) * 4,
    "valid JSON, wrong shape": lambda good: b'["schema", 1]',
    "unknown phase": lambda good: good.replace(b'"committed"', b'"half-swapped"'),
}


@pytest.mark.parametrize("how", list(TORN))
def test_torn_journal_is_set_aside_and_recovered_from(
        how: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """state.json as a crash mid-write on a filesystem without ordering could leave it: the
    launcher sets it aside, trusts the files, runs the installed agent and keeps updating."""
    builds = {sha(build(v)): v for v in ("0.1.0", "0.1.1")}
    lch = launcher()
    args = [*fast_args(server, lch), "--seed-binary", str(build("0.1.0"))]
    lch.start(*args)
    lch.wait_healthy("0.1.0")
    lch.wait_state(lambda s: s.get("phase") == "committed", what="committed")
    assert lch.stop() == 0
    journal = lch.state_dir / "state.json"
    journal.write_bytes(TORN[how](journal.read_bytes()))

    lch.start(*args)
    lch.wait_healthy("0.1.0")
    lch.wait_log("is unreadable")
    aside = list(lch.state_dir.glob("state.json.corrupt-*"))
    assert len(aside) == 1, "the unreadable journal is kept aside for a post-mortem"
    st = lch.wait_state(lambda s: (s.get("current") or {}).get("version") == "0.1.0",
                        what="journal rebuilt from the files")
    check_invariants(lch, builds)
    assert st["phase"] == "committed"
    server.publish("0.1.1", build("0.1.1"))
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and (s.get("current") or {}).get("version") == "0.1.1", timeout=30,
                   what="0.1.1 committed after the torn journal")
    check_invariants(lch, builds)
    assert lch.stop() == 0


# ---- randomized: kills at random instants through updates and rollbacks ----------------------


def _random_power_loss(seed: int, steps: int, server: UpdateServer,
                       launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """Publish good and crashing releases in turn; kill the whole tree at a random instant
    after each publish; after every restart the invariants hold and the step's expected end
    state (good → committed; crasher → rolled back and bad) is reached."""
    import random
    import time

    import psutil

    rng = random.Random(seed)
    builds: dict[str, str] = {}
    good_shas: set[str] = set()

    def agent(version: str, crashes: bool) -> Path:
        body = "exit 1" if crashes else "exec sleep 100000"
        path = script_agent(tmp_path / f"agent-{version}", version, body)
        builds[sha(path)] = version
        if not crashes:
            good_shas.add(sha(path))
        return path

    seed_agent = agent("1.0.0", crashes=False)
    lch = launcher()
    args = [*fast_args(server, lch, **{"--health-url": "", "--health-window": "0.6",
                                       "--poll-interval": "0.2"}),
            "--seed-binary", str(seed_agent)]
    lch.start(*args, agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "committed", what="seeded")
    expected, bad = "1.0.0", []
    for step in range(steps):
        version = f"1.0.{step + 1}"
        crashes = rng.random() < 0.4
        server.publish(version, agent(version, crashes))
        time.sleep(rng.uniform(0.0, 1.6))  # the random instant: anywhere in the cycle
        lch.kill_tree()
        # Everything is dead: the files alone must already be safe.
        bin_dir = lch.state_dir / "bin"
        assert sha(bin_dir / "agent") in builds, f"step {step}: bin/agent is not a build"
        leftovers = {(p.name, p.stat().st_ino) for p in bin_dir.glob(".agent.*")}
        lch.start(*args, agent_args=())
        if crashes:
            bad.append(version)
        else:
            expected = version
        st = lch.wait_state(
            lambda s, v=expected: s.get("phase") == "committed"
            and (s.get("current") or {}).get("version") == v
            and [b["version"] for b in s.get("bad", [])] == bad
            and (s.get("child") or {}).get("state") == "running"
            and _child_of(lch, (s.get("child") or {}).get("pid")),
            timeout=30, what=f"step {step} ({version}, crashes={crashes}) settled")
        st = check_invariants(lch, builds)
        assert {b["sha256"] for b in st["bad"]}.isdisjoint(good_shas), "a good build marked bad"
        assert not {(p.name, p.stat().st_ino) for p in bin_dir.glob(".agent.*")} & leftovers
        pid = st["child"]["pid"]
        assert psutil.pid_exists(pid)
    assert lch.stop() == 0


def _child_of(lch: Launcher, pid: int | None) -> bool:
    """``pid`` is a live child of this launcher process (not one from before the kill)."""
    import psutil

    try:
        return (pid is not None and lch.proc is not None
                and psutil.Process(pid).ppid() == lch.proc.pid)
    except psutil.Error:
        return False


def test_random_power_loss_short(server: UpdateServer, launcher: Callable[..., Launcher],
                                 tmp_path: Path) -> None:
    """A few updates and rollbacks with kills at random instants (fixed seed)."""
    _random_power_loss(5, 4, server, launcher, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_random_power_loss_long(seed: int, server: UpdateServer,
                                launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """Many updates and rollbacks with kills at random instants, several seeds."""
    _random_power_loss(seed, 25, server, launcher, tmp_path)
