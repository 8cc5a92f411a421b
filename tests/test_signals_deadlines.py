"""No signal lost, every exit status decoded, no step that can wedge the loop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import ROOT, Launcher, UpdateServer, fast_args, script_agent, wait_until


def slow_version_seed(path: Path, seconds: float) -> Path:
    """A seed whose ``--version`` takes ``seconds`` (a slow disk, a cold binary)."""
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then sleep {seconds}; echo 1.0.0; '
                    "exit 0; fi\nexec sleep 100000\n")
    path.chmod(0o755)
    return path


def test_sigterm_during_start_up_is_acted_on_when_the_step_ends(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A SIGTERM while the seed's slow ``--version`` runs: one signal is enough, the launcher
    stops as soon as that step is over and starts no agent."""
    lch = launcher()
    lch.start("--seed-binary", str(slow_version_seed(tmp_path / "seed", 2.0)), agent_args=())
    lch.wait_log("launcher starting")
    time.sleep(0.5)
    assert lch.proc is not None
    sent = time.monotonic()
    lch.proc.send_signal(signal.SIGTERM)
    assert lch.proc.wait(10) == 0
    assert time.monotonic() - sent < 5.0
    assert "started agent" not in lch.log()


def test_an_agent_killed_by_a_real_time_signal_is_decoded_and_restarted(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """SIGRTMIN+4 has no name in Python's enum: the resident still reports and handles it."""
    rt = signal.SIGRTMIN + 4
    agent = script_agent(tmp_path / "a", "1.0.0", f"sleep 0.2; kill -{int(rt)} $$; sleep 5")
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    lch.wait_log(r"agent 1\.0\.0 killed by SIGRTMIN\+4", count=2, timeout=20)
    lch.wait_log("restarting agent 1.0.0", count=2)
    assert lch.proc is not None and lch.proc.poll() is None
    assert lch.stop() == 0


TRICKLE_AGENT = """#!/usr/bin/env python3
import socket, sys, time
if sys.argv[1:] == ["--version"]:
    print("{version}")
    sys.exit(0)
srv = socket.create_server(("127.0.0.1", {port}))
while True:
    conn, _ = srv.accept()
    try:
        conn.recv(1024)
        for _ in range(2000):  # a status line that never ends, a byte every 0.3 s
            conn.sendall(b"H")
            time.sleep(0.3)
    except OSError:
        pass
    conn.close()
"""


def test_a_health_endpoint_that_trickles_cannot_hold_the_loop(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """Each probe has one overall deadline: a trial against an agent that answers a byte at
    a time fails in its window, and a SIGTERM meanwhile is acted on at once."""
    lch = launcher()
    agent = tmp_path / "trickle"
    agent.write_text(TRICKLE_AGENT.format(version="0.1.1", port=lch.health_port))
    agent.chmod(0o755)
    server.publish("0.1.1", agent)
    lch.start(*fast_args(server, lch, **{"--health-window": "30"}), "--seed-binary",
              str(build("0.1.0")))
    lch.wait_state(lambda s: s.get("phase") == "trial", timeout=30, what="0.1.1 on trial")
    time.sleep(3)  # several probes in
    assert lch.proc is not None
    sent = time.monotonic()
    lch.proc.send_signal(signal.SIGTERM)
    assert lch.proc.wait(15) == 0
    assert time.monotonic() - sent < 6.0, "a probe held the loop"


def test_a_slow_or_hostile_control_client_cannot_stall_or_crash_the_resident(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A request trickled a byte a second gets its error answer at the overall deadline while
    the loop goes on; deeply nested JSON is an error answer, not a crash."""
    lch = launcher()
    lch.start("--seed-binary", str(script_agent(tmp_path / "a", "1.0.0", "exec sleep 100000")),
              agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    path = str(lch.state_dir / "run" / "control.sock")
    wait_until(lambda: Path(path).exists(), 10, "control socket")

    with socket.socket(socket.AF_UNIX) as nested:
        nested.connect(path)
        nested.sendall(b"[" * 60_000 + b"\n")  # fits the size cap; too deep for json
        nested.settimeout(10)
        answer = json.loads(nested.recv(65536))
    assert answer["ok"] is False and "bad request" in answer["error"]

    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(path)
        started = time.monotonic()
        for byte in b'{"cmd": ':
            try:
                slow.sendall(bytes([byte]))
            except BrokenPipeError:  # answered and closed at the deadline
                break
            time.sleep(0.4)
            if time.monotonic() - started > 2.5:
                break
        slow.settimeout(5)
        try:
            answer = json.loads(slow.recv(65536))
        except ConnectionResetError:  # closed with our bytes unread: the answer may be lost
            answer = {"ok": False, "error": "bad request: reset"}
    assert answer["ok"] is False and "bad request" in answer["error"]
    assert time.monotonic() - started < 4.0

    # Meanwhile and after, the resident answers others and is alive.
    done = subprocess.run([sys.executable, "-m", "launcher", "unblock", "9.9.9",
                           "--state-dir", str(lch.state_dir)], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, check=False)
    assert done.returncode == 0 and "unblocked 0" in done.stdout
    assert lch.proc is not None and lch.proc.poll() is None
    assert lch.stop() == 0


def test_a_slow_control_client_does_not_delay_a_stop(launcher: Callable[..., Launcher],
                                                      tmp_path: Path) -> None:
    """A client trickling its request a byte every 0.5 s for 6 s: a SIGTERM meanwhile is
    acted on at once (the loop never waits inside one connection)."""
    import threading

    lch = launcher()
    lch.start("--seed-binary", str(script_agent(tmp_path / "a", "1.0.0", "exec sleep 100000")),
              agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    path = lch.state_dir / "run" / "control.sock"
    wait_until(path.exists, 10, "control socket")

    def trickle() -> None:
        with socket.socket(socket.AF_UNIX) as slow:
            slow.connect(str(path))
            for _ in range(12):
                try:
                    slow.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.5)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    time.sleep(0.3)
    assert lch.proc is not None
    sent = time.monotonic()
    lch.proc.send_signal(signal.SIGTERM)
    assert lch.proc.wait(15) == 0
    assert time.monotonic() - sent < 3.0
    sender.join(10)


def test_leftover_journal_temp_files_are_removed_at_start(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A kill inside a journal write leaves ``.state.json.*.tmp``: the next start removes it."""
    state = tmp_path / "state"
    state.mkdir()
    left = [state / ".state.json.k1a2b3.tmp", state / ".state.json.prev-link"]
    for p in left:
        p.write_text("{")
    lch = launcher(state)
    lch.start("--seed-binary", str(script_agent(tmp_path / "a", "1.0.0", "exec sleep 100000")),
              agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    assert not any(p.exists() for p in left)
    assert "removed leftover journal temp files" in lch.log()
    assert lch.stop() == 0


def test_a_watcher_whose_directory_is_missing_backs_off(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A ``file://`` manifest in a directory that does not exist: the watcher is retried
    after 5 s, then 10 s, not every 5 s for ever."""
    url = (tmp_path / "missing" / "version.json").as_uri()
    lch = launcher()
    lch.start("--allow-unsigned", "--manifest-url", url, "--poll-interval", "600", "--jitter", "0",
              "--seed-binary", str(script_agent(tmp_path / "a", "1.0.0", "exec sleep 100000")),
              agent_args=())
    lch.wait_log(r"file watcher exited 1; restarting it in 5s")
    text = lch.wait_log(r"file watcher exited 1; restarting it in 10s", timeout=20)
    assert text.count("restarting it in 5s") == 1
    assert lch.stop() == 0
