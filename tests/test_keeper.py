"""One agent, always, and nothing left behind: the agent keeper through a real launcher."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import Launcher, UpdateServer, fast_args, run_cli, script_agent, wait_until

# A script agent whose process keeps its path in its command line (no exec), so copies of it
# can be counted.
LOOPER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


def agents(lch: Launcher) -> list[psutil.Process]:
    """Processes running the installed agent (bin/agent), whoever their parent."""
    path = str(lch.state_dir / "bin" / "agent")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if path in cmdline[:2] and p.status() != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def no_health(server: UpdateServer, lch: Launcher, **over: str) -> list[str]:
    return fast_args(server, lch, **{"--health-url": "", **over})


def test_rollback_during_crash_backoff_leaves_exactly_one_agent(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """An operator's rollback while the agent waits out a crash backoff: the pending restart
    is cancelled, so the old build runs once, not twice."""
    marker = tmp_path / "crash-now"
    old = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    new = script_agent(tmp_path / "a1", "0.1.1", f"[ -e {marker} ] && exit 3\n{LOOPER}")
    server.publish("0.1.1", new)
    lch = launcher()
    lch.start(*no_health(server, lch), "--seed-binary", str(old), agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    marker.touch()
    for p in agents(lch):
        p.terminate()
    lch.wait_log(r"restarting agent 0\.1\.1 in [1-9]", count=2, timeout=20)
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0, out.stderr
    # Past the restart that was pending: still one agent, the restored build.
    time.sleep(5)
    running = agents(lch)
    assert len(running) == 1, [p.pid for p in running]
    assert lch.state()["child"]["pid"] == running[0].pid
    assert lch.state()["current"]["version"] == "0.1.0"
    assert lch.stop() == 0


def test_update_during_crash_backoff_is_not_marked_bad(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """A good build applied while the old one waits out its crash backoff runs alone: the
    pending restart cannot start a second copy whose port clash would fail the trial."""
    crashing = script_agent(tmp_path / "a0", "0.1.0", "sleep 0.3; exit 3")
    lch = launcher()
    # The window outlasts the pending restart: a second copy would clash during the trial.
    lch.start(*fast_args(server, lch, **{"--poll-interval": "2", "--health-window": "10"}),
              "--seed-binary", str(crashing))
    lch.wait_log(r"restarting agent 0\.1\.0 in [2-9]", timeout=20)
    server.publish("0.1.1", build("0.1.1"))
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == "0.1.1", timeout=30,
                        what="0.1.1 committed")
    assert st["bad"] == [], st["bad"]
    text = lch.log()
    assert text.index("restarting agent 0.1.0 in") < text.index("swapped in 0.1.1")
    time.sleep(3)
    assert len(agents(lch)) == 1
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0


def test_an_agent_that_outlived_its_launcher_is_stopped_before_a_new_one(
        server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Only the launcher was killed (KillMode=process, a shell, supervisord): the next one
    finds the agent by journaled pid and start time and stops it first."""
    lch = launcher()
    lch.start("--seed-binary", str(build("0.1.0")), "--stop-grace", "3")
    lch.wait_healthy("0.1.0")
    first = lch.state()["child"]["pid"]
    assert lch.proc is not None
    lch.proc.kill()
    lch.proc.wait(10)
    assert psutil.pid_exists(first), "the agent should have outlived its launcher"
    again = launcher(lch.state_dir).start("--seed-binary", str(build("0.1.0")))
    again.wait_log("outlived the previous launcher")
    wait_until(lambda: not psutil.pid_exists(first)
               or psutil.Process(first).status() == psutil.STATUS_ZOMBIE, 10, "old agent gone")
    again.wait_healthy("0.1.0")
    assert again.state()["child"]["pid"] != first
    assert len(agents(again)) == 1
    assert again.stop() == 0


def test_a_trial_resumed_after_the_launcher_alone_died_is_not_charged(
        server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Killed alone mid-trial: the survivor is stopped, the trial resumes and commits; the
    build is not marked bad for the stop."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch, **{"--health-window": "6"}), "--seed-binary",
              str(build("0.1.0")))
    lch.wait_state(lambda s: (s.get("trial") or {}).get("healthy_seen") is True,
                   timeout=30, what="0.1.1 healthy on trial")
    survivor = lch.state()["child"]["pid"]
    assert lch.proc is not None
    lch.proc.kill()
    lch.proc.wait(10)
    again = launcher(lch.state_dir).start(*fast_args(server, lch, **{"--health-window": "6"}))
    again.wait_log("outlived the previous launcher")
    st = again.wait_state(lambda s: s.get("phase") == "committed", timeout=30,
                          what="trial committed")
    assert st["current"]["version"] == "0.1.1" and st["bad"] == []
    assert not psutil.pid_exists(survivor) or \
        psutil.Process(survivor).status() == psutil.STATUS_ZOMBIE
    assert again.stop() == 0


def test_a_daemonizing_agent_is_named_and_leaves_nothing(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """An agent that forks into the background and exits 0 is reported in plain words, and
    what it left running is stopped."""
    mark = _unique_sleep()
    agent = script_agent(tmp_path / "a", "1.0.0", f"(setsid sleep {mark} &)\nexit 0")
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    lch.wait_log("put itself in the background")
    lch.wait_log("restarting agent 1.0.0", count=2, timeout=20)
    assert not _sleepers(mark), "a daemon the agent left is still running"
    assert lch.stop() == 0
    assert not _sleepers(mark)


def test_nothing_the_agent_spawned_survives_a_clean_stop(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A grandchild that escaped the agent's group and lost its parent is still ended."""
    mark = _unique_sleep()
    agent = script_agent(tmp_path / "a", "1.0.0", f"(setsid sleep {mark} &)\nexec sleep 100000")
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    assert lch.proc is not None
    launcher_pid = lch.proc.pid
    wait_until(lambda: [p for p in _sleepers(mark) if p.ppid() == launcher_pid], 10,
               "the grandchild running, adopted by the launcher")
    assert lch.stop() == 0
    assert not _sleepers(mark)


def test_a_worker_dies_with_its_launcher(launcher: Callable[..., Launcher],
                                         tmp_path: Path) -> None:
    """A check stuck on a server that never answers ends when the launcher is killed. It
    runs at a lower CPU priority than the launcher and its agent (niceness +10)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/version.json"
        agent = script_agent(tmp_path / "a", "1.0.0", "exec sleep 100000")
        lch = launcher()
        lch.start("--allow-http", "--allow-unsigned", "--manifest-url", url, "--jitter", "0",
                  "--poll-interval", "0.2", "--seed-binary", str(agent), agent_args=())
        worker = wait_until(lambda: _child_with(lch, "launcher.worker"), 15, "a worker")
        assert lch.proc is not None
        base = psutil.Process(lch.proc.pid).nice()
        wait_until(lambda: worker.nice() == min(base + 10, 19), 10, "the worker's niceness")
        sleeper = wait_until(lambda: _child_with(lch, "sleep 100000") or
                             _child_with(lch, str(tmp_path / "a")), 15, "the agent")
        assert sleeper.nice() == base
        lch.proc.send_signal(signal.SIGKILL)
        lch.proc.wait(10)
        wait_until(lambda: not worker.is_running()
                   or worker.status() == psutil.STATUS_ZOMBIE, 5, "the worker gone")
        sleeper.kill()  # the agent outlives a launcher killed alone, by design: not our leak


def _unique_sleep() -> str:
    """A sleep argument no other test run uses: its processes can be told apart."""
    return f"4321.{uuid.uuid4().int % 10**8}"


def _sleepers(arg: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [])[-1:] == [arg] and p.status() != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _child_with(lch: Launcher, text: str) -> psutil.Process | None:
    assert lch.proc is not None
    for p in psutil.Process(lch.proc.pid).children():
        try:
            if text in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:  # a --version run or an earlier worker, just gone
            continue
    return None


def test_leftovers_are_looked_for_without_reading_every_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's exit used to read every process on the host twice (psutil's children
    and group scans), time in which a stop-first hand-over serves nothing. An empty group
    and no untracked child are now told by a signal-0 probe and /proc/self/task/*/children;
    a real leftover is still found."""
    import subprocess

    from launcher import child, keeper

    group = subprocess.Popen(["sleep", "30"], process_group=0)
    member = subprocess.Popen(["sleep", "30"], process_group=group.pid)
    try:
        ours = child.child_pids()  # the test process may have other children too
        assert ours is not None and {group.pid, member.pid} <= ours
        assert [p.pid for p in keeper.group_members(group.pid)] == [member.pid]
        assert member.pid in {p.pid for p in child.adopted(ours - {member.pid})}

        def no_scan(*_: object) -> None:
            raise AssertionError("read every process")

        monkeypatch.setattr(psutil, "process_iter", no_scan)
        monkeypatch.setattr(psutil, "Process", no_scan)
        assert child.adopted(ours) == []
        member.kill()
        member.wait()
        group.kill()
        group.wait()
        assert keeper.group_members(group.pid) == []
    finally:
        for p in (member, group):
            if p.poll() is None:
                p.kill()
                p.wait()
