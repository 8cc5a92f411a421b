"""Held sockets, readiness and hand-over, through real launchers, agents and sockets.

The launcher binds ``--listen`` once and hands it to every agent generation; a client
load runs against that port while builds are swapped in and rolled back, and every
connection must succeed. Agents that never send READY=1, or stop their WATCHDOG=1 pings,
are real processes speaking sd_notify to the launcher's socket.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    ROOT,
    Launcher,
    UpdateServer,
    agent_health,
    fast_args,
    free_port,
    run_cli,
    script_agent,
    wait_until,
)

WINDOW = "3"


class Load:
    """New connections at a steady pace from a thread; every failure is kept."""

    def __init__(self, port: int, every_s: float = 0.01) -> None:
        self.port = port
        self.every_s = every_s
        self.ok = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import json

        while not self._stop.wait(self.every_s):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                self.ok += 1
                if not self.versions or self.versions[-1] != body["version"]:
                    self.versions.append(body["version"])
                self.pids.add(int(body["pid"]))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()


def notify_agent(path: Path, version: str, *, ready: bool = True, pings: int = -1,
                 serve: bool = True) -> Path:
    """An agent in Python that serves /healthz on the inherited socket; sends READY=1 (or
    not) and ``pings`` WATCHDOG=1 pings (-1: forever) at WATCHDOG_USEC/2."""
    code = textwrap.dedent(f"""
        import json, os, socket, threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        assert int(os.environ["LISTEN_PID"]) == os.getpid()
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                data = json.dumps({{"status": "ok", "version": "{version}",
                                   "pid": os.getpid()}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            def log_message(self, *a):
                pass
        srv = ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socket.socket(fileno=3)
        if {serve!r}:
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = os.environ["NOTIFY_SOCKET"]
        addr = "\\0" + addr[1:] if addr.startswith("@") else addr
        if {ready!r}:
            ns.sendto(b"READY=1\\nSTATUS=serving", addr)
        every = int(os.environ.get("WATCHDOG_USEC", "1000000")) / 2e6
        n = {pings}
        while True:
            if n != 0:
                ns.sendto(b"WATCHDOG=1", addr)
                n -= 1
            time.sleep(every)
    """)
    return script_agent(path, version, f"exec {sys.executable} -c '{code}'")


def start(launcher: Launcher, server: UpdateServer, port: int, *extra: str,
          window: str = WINDOW) -> Launcher:
    args = fast_args(server, launcher, **{"--health-window": window,
                                          "--health-url": f"http://127.0.0.1:{port}/healthz"})
    return launcher.start(*args, "--listen", f"127.0.0.1:{port}", "--agent-watchdog", "1",
                          *extra, agent_args=("run", "--health-addr",
                                              f"127.0.0.1:{free_port()}"))


def committed(lch: Launcher, version: str) -> bool:
    st = lch.state()
    return st.get("phase") == "committed" and (st.get("current") or {}).get("version") == version


def bad(lch: Launcher, version: str) -> str | None:
    return next((b.get("reason") for b in lch.state().get("bad", [])
                 if b.get("version") == version), None)


def health(port: int) -> dict[str, Any] | None:
    return agent_health(f"http://127.0.0.1:{port}/healthz")


def test_agent_serves_the_inherited_socket(build: Any, server: UpdateServer,
                                           launcher: Any) -> None:
    """The real agent serves on the launcher's socket, ignores --health-addr (and says so),
    sends READY=1; LISTEN_PID in its environment is its own pid."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify")
    lch.wait_log(r"agent 1\.0\.0 \(pid \d+\) is ready \(READY=1\)")
    answer = wait_until(lambda: health(port), timeout=40, what="agent on the held port")
    assert answer["version"] == "1.0.0"
    log = lch.wait_log(r"serving on 1 inherited socket\(s\)")
    assert "is ignored" in log
    assert "holding 1 listening socket(s) for the agent: 127.0.0.1:" in log
    env = psutil.Process(answer["pid"]).environ()  # as it was at exec
    assert env["LISTEN_PID"] == str(answer["pid"])
    assert env["LISTEN_FDS"] == "1"
    assert env["WATCHDOG_USEC"] == "1000000" and env["WATCHDOG_PID"] == str(answer["pid"])
    assert "NOTIFY_SOCKET" in env
    assert lch.stop() in (0, 143)


def test_stop_first_update_and_rollback_under_load_refuse_nothing(
        build: Any, server: UpdateServer, launcher: Any) -> None:
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", window="1.5")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40, what="1.0.0 up")
    with Load(port) as load:
        server.publish("1.1.0", build("1.1.0"))
        lch.wait_state(lambda st: committed(lch, "1.1.0"), timeout=30, what="1.1.0 committed")
        assert run_cli("rollback", "--state-dir", str(lch.state_dir)).returncode == 0
        wait_until(lambda: (health(port) or {}).get("version") == "1.0.0", 20,
                   "1.0.0 back")
        time.sleep(0.3)
    assert load.failures == []
    assert load.ok > 50
    assert load.versions[:3] == ["1.0.0", "1.1.0", "1.0.0"]


def test_a_build_that_never_sends_ready_fails_its_trial(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", window="2")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40, what="1.0.0 up")
    server.publish("1.1.0", notify_agent(tmp_path / "mute", "1.1.0", ready=False))
    lch.wait_state(lambda st: bad(lch, "1.1.0") is not None, timeout=30, what="1.1.0 bad")
    assert "sent no READY=1" in (bad(lch, "1.1.0") or "")
    wait_until(lambda: (health(port) or {}).get("version") == "1.0.0", 20, "1.0.0 back")


def test_a_build_that_stops_its_watchdog_pings_fails_its_trial(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", window="4")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40, what="1.0.0 up")
    server.publish("1.1.0", notify_agent(tmp_path / "stalls", "1.1.0", pings=2))
    lch.wait_state(lambda st: bad(lch, "1.1.0") is not None, timeout=30, what="1.1.0 bad")
    assert "stopped its WATCHDOG=1 pings" in (bad(lch, "1.1.0") or "")
    lch.wait_log(r"agent 1\.1\.0 \(pid \d+\) is ready")  # it did become ready first


def test_overlap_with_a_never_ready_build_keeps_the_old_agent_serving(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    """The old agent is never stopped: the same pid answers every request, none fails."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", "--handover", "overlap",
                window="2")
    first = wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40,
                       what="1.0.0 up")
    with Load(port) as load:
        # Stuck before it serves: it holds the socket but never accepts from it.
        server.publish("1.1.0", notify_agent(tmp_path / "mute", "1.1.0", ready=False,
                                             serve=False))
        lch.wait_state(lambda st: bad(lch, "1.1.0") is not None, timeout=30, what="1.1.0 bad")
        lch.wait_log(r"agent \(pid \d+\) never stopped and serves on")
        time.sleep(0.3)
    assert load.failures == []
    assert load.pids == {first["pid"]}  # every answer came from the old agent
    assert (health(port) or {}).get("pid") == first["pid"], lch.log()
    assert psutil.pid_exists(first["pid"])


def test_overlap_update_and_rollback_under_load(build: Any, server: UpdateServer,
                                                launcher: Any) -> None:
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", "--handover", "overlap",
                window="1.5")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40, what="1.0.0 up")
    with Load(port) as load:
        server.publish("1.1.0", build("1.1.0"))
        lch.wait_state(lambda st: committed(lch, "1.1.0"), timeout=30, what="1.1.0 committed")
        assert run_cli("rollback", "--state-dir", str(lch.state_dir)).returncode == 0
        wait_until(lambda: (health(port) or {}).get("version") == "1.0.0", 20, "1.0.0 back")
        time.sleep(0.3)
    assert load.failures == []
    assert "handing over: stopping the previous agent" in lch.log()


def test_overlap_without_notify_is_refused() -> None:
    result = run_cli("run", "--state-dir", "/nonexistent", "--allow-unsigned",
                     "--handover", "overlap")
    assert result.returncode == 2
    assert "--handover overlap needs --ready notify" in result.stderr


SHIM = """
import os, socket, sys
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(16)
fd = sock.detach()
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
os.execv(sys.executable, [sys.executable, "-m", "launcher", *sys.argv[2:]])
"""


def test_sockets_from_systemd_are_handed_on(build: Any, server: UpdateServer,
                                            tmp_path: Path) -> None:
    """Socket activation faked: a shim binds fd 3 and sets LISTEN_FDS/LISTEN_PID as
    systemd does, then execs the launcher (same pid). The agent serves on that socket
    with LISTEN_PID naming the agent itself, not the launcher."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    log_path = tmp_path / "launcher.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SHIM, str(port), "run", "--state-dir",
             str(tmp_path / "state"), "--manifest-url", server.manifest_url, "--allow-http",
             "--allow-unsigned", "--poll-interval", "30", "--jitter", "0", "--ready",
             "notify", "--", "run", "--health-addr", f"127.0.0.1:{free_port()}"],
            cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True)
    try:
        answer = wait_until(lambda: health(port) or proc.poll() is not None, 30,
                            "agent on systemd's socket")
        assert proc.poll() is None, log_path.read_text()
        text = log_path.read_text()
        assert "took over 1 socket(s) from systemd: web" in text
        agent = psutil.Process(answer["pid"])
        assert agent.ppid() == proc.pid
        env = agent.environ()  # systemd's LISTEN_PID named the launcher: not handed on as is
        assert (env["LISTEN_PID"], env["LISTEN_FDS"], env["LISTEN_FDNAMES"]) == (
            str(agent.pid), "1", "web")
        assert "serving on 1 inherited socket(s) (LISTEN_FDS: web)" in \
            wait_until(lambda: "inherited" in log_path.read_text() and log_path.read_text())
        # The worker (any helper) holds no listening socket: only the launcher and the agent.
        holders = {p.pid for p in psutil.process_iter()
                   if any(c.laddr and c.laddr.port == port and c.status == "LISTEN"
                          for c in _connections(p))}
        assert holders <= {proc.pid, answer["pid"]}
    finally:
        proc.terminate()
        proc.wait(20)


def _connections(p: psutil.Process) -> list[Any]:
    try:
        return list(p.net_connections(kind="tcp"))
    except (psutil.Error, OSError):
        return []


def test_a_port_already_taken_is_a_clear_error(tmp_path: Path, build: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", "--state-dir", str(tmp_path / "s"), "--seed-binary",
                         str(build("1.0.0")), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("text", ["80", "host:", "unix:relative", "1.2.3.4:99999", "::1:80"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    from launcher.sockets import parse_listen

    with pytest.raises(ValueError, match=text.replace("[", r"\[")):
        parse_listen(text)


def test_a_launcher_killed_during_an_overlap_leaves_no_agent_holding_the_port(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    """SIGKILL to the launcher alone while two agents run: the next launcher stops both
    (the outgoing one is journaled nowhere), binds the port again and carries on."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", "--handover", "overlap",
                window="2")
    first = wait_until(lambda: committed(lch, "1.0.0") and health(port), timeout=40,
                       what="1.0.0 up")
    server.publish("1.1.0", notify_agent(tmp_path / "mute", "1.1.0", ready=False))
    lch.wait_log(r"keeps serving until the new one is ready")
    assert lch.proc is not None
    lch.proc.kill()
    lch.proc.wait(10)
    assert psutil.pid_exists(first["pid"])  # the old agent outlived it, socket and all
    again = start(launcher(lch.state_dir), server, port, "--ready", "notify",
                  "--handover", "overlap", window="2")
    again.wait_log(r"outlived the previous launcher")
    wait_until(lambda: bad(again, "1.1.0") is not None, 30, "1.1.0 failed its trial")
    answer = wait_until(lambda: (h := health(port)) and h["version"] == "1.0.0" and h, 30,
                        "1.0.0 serving again")
    assert answer["pid"] != first["pid"]
    wait_until(lambda: not psutil.pid_exists(first["pid"])
               or psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE, 10,
               "the old agent gone")
