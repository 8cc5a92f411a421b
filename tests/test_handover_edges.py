"""The held socket's edges, through real launchers, agents and sockets.

A plain blocking agent after the project's agent and after one that set O_NONBLOCK (the
flag is shared by every generation); a slow client during a stop-first swap; SIGTERM
while a rollback's overlap waits on a restored agent in crash backoff; SIGKILL to the
launcher while the new agent of an overlap is a wrapper that exec'd its server.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, UpdateServer, free_port, run_cli, script_agent, wait_until
from hostile import trickled_request
from test_handover import bad, committed, health, start


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test expects gone; killed at the end if they are not."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def python_agent(path: Path, version: str, code: str, *args: str) -> Path:
    """An agent that is a shell wrapper exec'ing Python: its command line does not name
    the agent binary once it runs."""
    script = path.with_suffix(".py")
    script.write_text(textwrap.dedent(code).replace("VERSION", version))
    return script_agent(path, version, f"exec {sys.executable} {script} {' '.join(args)}")


SERVE_FD3 = """
    import json, os, socket, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            d = json.dumps({"status": "ok", "version": "VERSION", "pid": os.getpid()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(d)))
            self.end_headers()
            self.wfile.write(d)
        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
    srv.socket.close()
    srv.socket = socket.socket(fileno=3)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = os.environ["NOTIFY_SOCKET"]
    addr = "\\0" + addr[1:] if addr.startswith("@") else addr
"""

# A classic sd_listen_fds agent: blocking accept() on fd 3, as systemd hands it.
BLOCKING = """
    import fcntl, json, os, socket
    nonblocking = bool(fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK)
    s = socket.socket(fileno=3)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = os.environ["NOTIFY_SOCKET"]
    ns.sendto(b"READY=1", "\\0" + addr[1:] if addr.startswith("@") else addr)
    while True:
        c, _ = s.accept()
        c.recv(4096)
        body = json.dumps({"status": "ok", "version": "VERSION", "pid": os.getpid(),
                           "nonblocking": nonblocking}).encode()
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
        c.close()
"""


def blocking_agent_takes_over(lch: Any, server: UpdateServer, port: int,
                              tmp_path: Path) -> None:
    """Publish ``BLOCKING`` as 1.1.0: it is committed, serves the port, and found the
    held socket blocking."""
    server.publish("1.1.0", python_agent(tmp_path / "blocking", "1.1.0", BLOCKING))
    wait_until(lambda: committed(lch, "1.1.0") or bad(lch, "1.1.0"), 60, "a verdict on 1.1.0")
    assert bad(lch, "1.1.0") is None, lch.log()
    answer = health(port)
    assert answer is not None and answer["version"] == "1.1.0"
    assert answer["nonblocking"] is False


def test_a_blocking_accept_agent_follows_the_project_agent(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    """The project agent served the held socket first; the next build accepts with a plain
    blocking accept(): it finds the socket blocking, as the launcher bound it, and passes."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), 40, "1.0.0 up")
    for _ in range(10):
        assert (health(port) or {}).get("version") == "1.0.0"
    blocking_agent_takes_over(lch, server, port, tmp_path)
    assert lch.proc is not None  # and the launcher's own socket is still blocking
    held = [c.fd for c in psutil.Process(lch.proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert len(held) == 1
    fdinfo = Path(f"/proc/{lch.proc.pid}/fdinfo/{held[0]}").read_text()
    found = re.search(r"^flags:\s+([0-7]+)$", fdinfo, re.M)
    assert found is not None and not int(found[1], 8) & os.O_NONBLOCK


SETS_NONBLOCKING = SERVE_FD3 + """
    srv.socket.setblocking(False)  # as a Go or asyncio server does: the flag is shared
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    ns.sendto(b"READY=1", addr)
    while True:
        time.sleep(0.5)
"""


def test_a_socket_made_non_blocking_by_one_agent_is_handed_on_blocking(
        server: UpdateServer, launcher: Any, tmp_path: Path) -> None:
    """An agent sets O_NONBLOCK on the held socket; the next one (stop-first, so nothing
    else serves it) gets it blocking again, as the launcher bound it and as systemd does
    before every exec, and its blocking accept() works."""
    port = free_port()
    server.publish("1.0.0", python_agent(tmp_path / "nonblocking", "1.0.0", SETS_NONBLOCKING))
    lch = start(launcher(), server, port, "--ready", "notify")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), 40, "1.0.0 up")
    blocking_agent_takes_over(lch, server, port, tmp_path)
    assert "the previous agent made listening socket fd" in lch.log()


def test_a_trickling_client_does_not_stall_a_stop_first_swap(
        build: Any, server: UpdateServer, launcher: Any) -> None:
    """One client on the held port sends a byte every 3 s: the old agent cuts it after its
    2 s drain and exits, so the swap is no SIGKILL after --stop-grace with nobody
    answering."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", "--stop-grace", "10",
                window="2")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), 40, "1.0.0 up")
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        with trickled_request(slow, 3):
            server.publish("1.1.0", build("1.1.0"))
            lch.wait_log(r"stopping agent 1\.0\.0", timeout=30)
            stopping = time.monotonic()
            wait_until(lambda: (health(port) or {}).get("version") == "1.1.0", 30, "1.1.0 answers")
            waited = time.monotonic() - stopping
    finally:
        slow.close()
    assert "sending SIGKILL" not in lch.log()
    assert waited < 8.0, f"no answer for {waited:.1f}s during the swap"  # stop grace: 10 s


CRASHES_WHEN_TOLD = SERVE_FD3 + """
    if os.path.exists(sys.argv[1]):
        sys.exit(3)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    ns.sendto(b"READY=1", addr)
    while True:
        time.sleep(0.5)
"""


def test_sigterm_while_a_rollback_overlap_waits_on_a_crashed_agent_stops_both(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path,
        strays: list[int]) -> None:
    """A rollback overlaps: the failed agent serves while the restored one starts; that one
    crashes and waits in crash backoff. SIGTERM to the launcher stops the failed agent too:
    nothing outlives a clean stop."""
    port = free_port()
    marker = tmp_path / "crash-now"
    server.publish("1.0.0", python_agent(tmp_path / "v1", "1.0.0", CRASHES_WHEN_TOLD,
                                         str(marker)))
    lch = start(launcher(), server, port, "--ready", "notify", "--handover", "overlap",
                window="2")
    wait_until(lambda: committed(lch, "1.0.0") and health(port), 40, "1.0.0 up")
    server.publish("1.1.0", build("1.1.0"))
    newer = wait_until(lambda: committed(lch, "1.1.0") and (h := health(port))
                       and h["version"] == "1.1.0" and h, 60, "1.1.0 committed")
    strays.append(newer["pid"])
    marker.write_text("crash")
    assert run_cli("rollback", "--state-dir", str(lch.state_dir)).returncode == 0
    lch.wait_log(r"restarting agent 1\.0\.0 in", timeout=20)
    assert not gone(newer["pid"])  # still serving: the overlap's outgoing agent
    assert lch.stop() == 0
    wait_until(lambda: gone(newer["pid"]), 10, "the 1.1.0 agent stopped with its launcher")


WARMS_UP_FOREVER = SERVE_FD3 + """
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    while True:  # never READY=1; errors ignored, as sd_notify's are
        try:
            ns.sendto(b"STATUS=warming up", addr)
        except OSError:
            pass
        time.sleep(0.5)
"""


def test_a_surviving_exec_wrapper_agent_is_found_by_pid_and_start_time(
        build: Any, server: UpdateServer, launcher: Any, tmp_path: Path,
        strays: list[int]) -> None:
    """SIGKILL to the launcher while the new agent of an overlap is a wrapper that exec'd
    Python (its command line no longer names bin/agent): the next launcher recognises the
    journaled pid and start time, stops it, binds the port and carries on."""
    port = free_port()
    server.publish("1.0.0", build("1.0.0"))
    lch = start(launcher(), server, port, "--ready", "notify", "--handover", "overlap",
                window="2")
    first = wait_until(lambda: committed(lch, "1.0.0") and health(port), 40, "1.0.0 up")
    strays.append(first["pid"])
    server.publish("1.1.0", python_agent(tmp_path / "mute", "1.1.0", WARMS_UP_FOREVER))
    lch.wait_log(r"keeps serving until the new one is ready", timeout=30)
    mute = wait_until(lambda: (lch.state().get("child") or {}).get("state") == "running"
                      and lch.state()["child"]["version"] == "1.1.0"
                      and lch.state()["child"]["pid"], 20, "the 1.1.0 agent journaled")
    strays.append(mute)
    assert str(tmp_path / "mute.py") in psutil.Process(mute).cmdline()
    assert lch.proc is not None
    lch.proc.kill()
    lch.proc.wait(10)
    assert not gone(mute)
    again = start(launcher(lch.state_dir), server, port, "--ready", "notify",
                  "--handover", "overlap", window="2")
    again.wait_log(rf"agent 1\.1\.0 \(pid {mute}\) outlived the previous launcher", timeout=30)
    wait_until(lambda: gone(mute) and gone(first["pid"]), 10, "both old agents stopped")
    wait_until(lambda: bad(again, "1.1.0") is not None, 30, "1.1.0 failed its trial")
    answer = wait_until(lambda: (h := health(port)) and h["version"] == "1.0.0" and h, 30,
                        "1.0.0 serving again")
    assert answer["pid"] not in (first["pid"], mute)
    assert again.proc is not None and again.proc.poll() is None, again.log()


SPAWN_MISSING = """
import os, socket, sys
sys.path.insert(0, sys.argv[1])
from launcher import passfds
held = []
for i in range(4):  # held at 64 onwards, as the launcher holds them; 3... left free
    fd = socket.create_server(("127.0.0.1", 0)).detach()
    held.append(os.dup2(fd, 64 + i, inheritable=False))
    os.close(fd)
try:
    pid = passfds.spawn(["/nonexistent/agent"], {}, held)
except OSError as exc:
    print("OSError", exc.errno)
else:
    print("spawned, then", os.waitpid(pid, 0)[1])
"""


def test_an_agent_that_cannot_be_executed_is_an_error_whatever_the_free_fds() -> None:
    """In a process whose lowest free fds are 3 and up (where the sockets go), the
    exec-error pipe used to be overwritten by a socket: the failure was lost and the
    child died of SIGPIPE instead of the spawn raising ENOENT."""
    import errno
    import subprocess

    out = subprocess.run([sys.executable, "-I", "-c", SPAWN_MISSING, str(ROOT)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["OSError", str(errno.ENOENT)], out.stdout + out.stderr
