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
from conftest import Launcher, UpdateServer, fast_args, script_agent


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_invariants(lch: Launcher, builds: dict[str, str]) -> dict[str, object]:
    """``builds`` maps sha256 → version of every build that was published."""
    st = lch.state()
    bin_dir = lch.state_dir / "bin"
    names = sorted(p.name for p in bin_dir.iterdir())
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
