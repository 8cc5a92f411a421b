"""The update cycle end to end: real update server, real launcher, real agent children."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from conftest import Launcher, UpdateServer, fast_args, script_agent, wait_until

UPDATE_LINE = "Update found: 0.1.1. Synchronizing..."


def bad_names(state: dict) -> list[str]:  # type: ignore[type-arg]
    return [b["version"] for b in state.get("bad", [])]


def test_good_update(server: UpdateServer, launcher: Callable[..., Launcher],
                     build: Callable[[str], Path]) -> None:
    """0.1.0 installs from an empty state dir, then 0.1.1 replaces it and is committed."""
    server.publish("0.1.0", build("0.1.0"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.0")
    lch.wait_state(lambda s: s.get("phase") == "committed")

    server.publish("0.1.1", build("0.1.1"))
    log = lch.wait_log(UPDATE_LINE)
    assert UPDATE_LINE in log
    lch.wait_healthy("0.1.1")
    st = lch.wait_state(lambda s: s["phase"] == "committed" and s["current"]["version"] == "0.1.1",
                        what="0.1.1 committed")
    assert st["previous"]["version"] == "0.1.0"
    bin_dir = lch.state_dir / "bin"
    assert sorted(p.name for p in bin_dir.iterdir()) == ["agent", "agent.old"]
    assert lch.stop() == 0


def test_crash_on_start_rolls_back_and_is_never_reapplied(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """A build that exits at once is rolled back, marked bad by version and sha256, and skipped."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.1")
    crasher = script_agent(tmp_path / "crash", "0.1.2", "echo boom >&2; exit 1")
    manifest = server.publish("0.1.2", crasher)
    lch.wait_log(r"rolled back to 0\.1\.1")
    st = lch.wait_state(lambda s: "0.1.2" in bad_names(s), what="0.1.2 marked bad")
    assert st["current"]["version"] == "0.1.1"
    assert st["phase"] == "committed"
    bad = st["bad"][0]
    assert bad["sha256"] == manifest["binaries"]["linux-amd64"]["sha256"]
    assert "exited 1" in bad["reason"]
    lch.wait_healthy("0.1.1")
    # Several more polls happen; none re-applies the bad build.
    lch.wait_log(r"no update: 0\.1\.2 .*marked bad")
    checks = lch.log().count("started update check")
    lch.wait_log("started update check", count=checks + 2)
    assert lch.log().count("Update found: 0.1.2") == 1
    assert lch.stop() == 0


def test_never_healthy_rolls_back(server: UpdateServer, launcher: Callable[..., Launcher],
                                  build: Callable[[str], Path], tmp_path: Path) -> None:
    """A build that runs but never answers its health URL fails the window and is rolled back."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.1")
    silent = script_agent(tmp_path / "silent", "0.1.2", "exec sleep 60")
    server.publish("0.1.2", silent)
    st = lch.wait_state(lambda s: "0.1.2" in bad_names(s), what="0.1.2 marked bad")
    assert "never answered" in st["bad"][0]["reason"]
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0


def test_fixed_rebuild_with_new_hash_is_not_blocked(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """The bad mark is keyed by version and sha256: a fixed 0.1.2 with a new hash installs."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.1")
    server.publish("0.1.2", script_agent(tmp_path / "crash", "0.1.2", "exit 1"))
    lch.wait_state(lambda s: "0.1.2" in bad_names(s), what="0.1.2 marked bad")
    server.publish("0.1.2", build("0.1.2"))
    lch.wait_healthy("0.1.2")
    lch.wait_state(lambda s: s["phase"] == "committed" and s["current"]["version"] == "0.1.2",
                   what="fixed 0.1.2 committed")
    assert lch.stop() == 0


def test_sigterm_is_forwarded_and_exit_code_is_the_childs(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """SIGTERM reaches the agent; a clean stop exits 0, an agent that exits 3 on TERM gives 3."""
    marker = tmp_path / "got-term"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"trap 'echo term > {marker}; exit 3' TERM\n"
                         "while :; do sleep 0.05; done")
    lch = launcher()
    lch.start("--seed-binary", str(agent), "--stop-grace", "5", agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    assert lch.stop(signal.SIGTERM) == 3
    assert marker.read_text().strip() == "term"

    lch2 = launcher(tmp_path / "state2")
    lch2.start("--seed-binary", str(agent), "--stop-grace", "5",
               agent_args=())
    lch2.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    # An agent that dies of the TERM itself counts as a clean stop.
    plain = script_agent(tmp_path / "b", "1.0.0", "exec sleep 60")
    lch3 = launcher(tmp_path / "state3")
    lch3.start("--seed-binary", str(plain), agent_args=())
    lch3.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    assert lch3.stop(signal.SIGTERM) == 0
    assert lch2.stop(signal.SIGINT) == 3


def test_second_launcher_is_refused(launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """Two launchers on one state dir: the second exits 2 and says why."""
    agent = script_agent(tmp_path / "a", "1.0.0", "exec sleep 60")
    first = launcher()
    first.start("--seed-binary", str(agent), agent_args=())
    first.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    second = launcher(first.state_dir)
    second.start("--seed-binary", str(agent), agent_args=())
    assert second.proc is not None
    assert second.proc.wait(10) == 2
    assert "another launcher" in second.log()
    assert first.proc is not None and first.proc.poll() is None
    assert first.stop() == 0


def test_crashing_agent_is_restarted_with_backoff(launcher: Callable[..., Launcher],
                                                  tmp_path: Path) -> None:
    """Outside an update a crashed agent is restarted, with growing delays."""
    agent = script_agent(tmp_path / "a", "1.0.0", "exit 4")
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    log = lch.wait_log(r"restarting agent 1\.0\.0 in", count=3)
    delays = [float(d) for d in __import__("re").findall(r"restarting agent 1\.0\.0 in ([\d.]+)s",
                                                          log)]
    assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0]
    assert "exited 4" in log
    st = lch.state()
    assert st["child"]["state"] in ("backoff", "running")
    assert lch.stop() == 0


def test_status_json_reports_the_contract_fields(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """``status --json`` names current, phase, previous, bad versions, last check and error."""
    import subprocess
    import sys

    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.1")
    server.publish("0.1.2", script_agent(tmp_path / "crash", "0.1.2", "exit 1"))
    lch.wait_state(lambda s: "0.1.2" in bad_names(s) and s.get("last_check_at"))
    out = subprocess.run([sys.executable, "-m", "launcher", "status", "--json", "--state-dir",
                          str(lch.state_dir)], capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    assert status["current_version"] == "0.1.1"
    assert status["phase"] == "committed"
    assert status["bad_versions"] == ["0.1.2"]
    assert status["last_check_at"].endswith("Z")
    assert status["last_error"] is None
    assert status["launcher_pid"] == lch.proc.pid  # type: ignore[union-attr]
    text = subprocess.run([sys.executable, "-m", "launcher", "status", "--state-dir",
                           str(lch.state_dir)], capture_output=True, text=True, check=True)
    assert "bad build:   0.1.2" in text.stdout
    assert lch.stop() == 0
    wait_until(lambda: True)
