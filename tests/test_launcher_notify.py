"""The launcher speaks systemd's notify protocol to a real datagram socket."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, script_agent, wait_until


def test_ready_status_watchdog_stopping_reach_the_manager(tmp_path: Path) -> None:
    """READY=1 once supervising, STATUS on changes, WATCHDOG=1 on time, STOPPING=1 at stop."""
    path = tmp_path / "notify.sock"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(path))
    manager.settimeout(0.2)
    agent = script_agent(tmp_path / "a", "1.0.0", "exec sleep 60")
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", "--state-dir",
                             str(tmp_path / "s"), "--seed-binary", str(agent)], cwd=ROOT,
                            env=env, stderr=subprocess.DEVNULL)
    got: list[str] = []

    def receive() -> None:
        with contextlib.suppress(TimeoutError):
            got.append(manager.recv(4096).decode())

    try:
        wait_until(lambda: receive() or sum("WATCHDOG=1" in m for m in got) >= 3, 10,
                   "three watchdog pings")
        ready = [m for m in got if "READY=1" in m]
        assert ready and "STATUS=agent 1.0.0 running" in ready[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_until(lambda: receive() or any("STOPPING=1" in m for m in got), 5, "STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()
