"""A stop-first rollback journals and renames while the rolled-back build still runs; the
stop comes last. A launcher killed alone in that stop (OOM, SIGKILL of the launcher only)
leaves that build really running: the next launcher must stop it and run the restored
build alone. (The power-loss fault points kill the whole tree, agent included: they cannot
show this window.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
from conftest import ROOT, Launcher, UpdateServer, fast_args, script_agent, wait_until

# Ignores SIGTERM and keeps its path on its command line (no exec), so copies can be counted.
STUBBORN = "trap '' TERM; while :; do sleep 0.05; done"
LOOPER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def agents(lch: Launcher) -> list[psutil.Process]:
    path = str(lch.state_dir / "bin" / "agent")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if path in (p.info["cmdline"] or [])[:2] and running(p.pid):
            found.append(p)
    return found


def test_a_launcher_killed_alone_while_stopping_a_rolled_back_build(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    old = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", STUBBORN))
    lch = launcher()
    base = [*fast_args(server, lch, **{"--health-url": ""}), "--seed-binary", str(old)]
    lch.start(*base, "--stop-grace", "30", agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and (s.get("current") or {}).get("version") == "0.1.1"
                   and (s.get("child") or {}).get("state") == "running", timeout=30,
                   what="0.1.1 committed and running")
    serving = lch.state()["child"]["pid"]
    rollback = subprocess.Popen([sys.executable, "-m", "launcher", "rollback", "--state-dir",
                                 str(lch.state_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        lch.wait_log(rf"\(pid {serving}\) with SIGTERM", timeout=30)
        st = lch.state()  # journaled and renamed before the stop began
        assert st["phase"] == "committed" and st["current"]["version"] == "0.1.0", st
        assert lch.proc is not None
        lch.proc.kill()  # the launcher alone
        lch.proc.wait(10)
    finally:
        rollback.kill()
        rollback.wait(10)
    assert running(serving), "the rolled-back build runs on after the launcher died"

    again = launcher(lch.state_dir).start(*base, "--stop-grace", "1", agent_args=())
    again.wait_log("outlived the previous launcher", timeout=30)
    wait_until(lambda: not running(serving), 30, "the rolled-back build stopped")
    st = again.wait_state(lambda s: s.get("phase") == "committed"
                          and (s.get("child") or {}).get("state") == "running"
                          and s["child"].get("pid") not in (None, serving),
                          timeout=30, what="the restored build running")
    assert st["current"]["version"] == "0.1.0"
    assert [b["version"] for b in st["bad"]] == ["0.1.1"]
    assert [p.pid for p in agents(again)] == [st["child"]["pid"]]
    assert again.stop() == 0
