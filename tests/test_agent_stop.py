"""The agent's stop and its shared socket (real agent processes, real sockets).

An inherited socket's O_NONBLOCK is shared with the launcher and every other agent, so the
agent leaves it as it found it and serves either way; a flood of connections or a client
that trickles its request does not hold off the stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import agent_health, free_port, wait_until
from hostile import trickled_request

ROOT = Path(__file__).resolve().parent.parent
# Puts fd argv[1] at 3, names its own pid in LISTEN_PID and becomes the agent (argv[2:]).
AS_FD3 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
          "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def run_agent(procs: list[subprocess.Popen[bytes]], *, port: int | None = None,
              inherit: socket.socket | None = None) -> subprocess.Popen[bytes]:
    """``python -m agent run`` binding ``port``, or serving ``inherit`` as fd 3."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "agent", "run", "--health-addr",
            f"127.0.0.1:{port or free_port()}"]
    fds: tuple[int, ...] = ()
    if inherit is not None:
        fds = (inherit.fileno(),)
        env["LISTEN_FDS"] = "1"
        argv = [sys.executable, "-c", AS_FD3, str(inherit.fileno()), *argv]
    p = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=fds)
    procs.append(p)
    return p


def listening(blocking: bool) -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    sock.setblocking(blocking)
    return sock


def health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/healthz"


def stop_time(p: subprocess.Popen[bytes], timeout_s: float = 20.0) -> float:
    """SIGTERM, and the seconds until the agent exited (0 expected)."""
    started = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout_s) == 0
    return time.monotonic() - started


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
def test_an_inherited_socket_keeps_its_flag_and_is_served(
        procs: list[subprocess.Popen[bytes]], blocking: bool) -> None:
    """The agent serves a blocking and a non-blocking inherited socket alike, changes
    neither flag (the next agent generation, or another agent sharing it, relies on it)
    and stops at once."""
    with listening(blocking) as sock:
        port = sock.getsockname()[1]
        p = run_agent(procs, inherit=sock)
        wait_until(lambda: agent_health(health_url(port)), 30, "the agent on its socket")
        for _ in range(20):
            assert (agent_health(health_url(port)) or {}).get("status") == "ok"
        assert os.get_blocking(sock.fileno()) is blocking
        assert stop_time(p) < 5.0  # a serve thread blocked in accept() is not waited for
        assert os.get_blocking(sock.fileno()) is blocking


FLOOD = textwrap.dedent("""
    import socket, sys, time
    port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
    n = 0
    while time.monotonic() < until:
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except OSError:
            pass
        c.close()
        n += 1
        if n == 200:
            print("flooding", flush=True)
""")


def test_a_flood_of_connections_does_not_hold_off_the_stop(
        procs: list[subprocess.Popen[bytes]]) -> None:
    """Two processes open and close connections as fast as they can: the accept loop looks
    at the stop request between accepts, so SIGTERM ends the agent within about a second
    (it was not stopped after 22 s)."""
    port = free_port()
    agent = run_agent(procs, port=port)
    wait_until(lambda: agent_health(health_url(port)), 30, "the agent")
    floods = [subprocess.Popen([sys.executable, "-c", FLOOD, str(port), "30"],
                               stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for f in floods:
            assert f.stdout is not None and f.stdout.readline() == b"flooding\n"
        took = stop_time(agent)
    finally:
        for f in floods:
            f.kill()
            f.wait()
            assert f.stdout is not None
            f.stdout.close()
    assert took < 3.0, f"stopped {took:.1f}s after SIGTERM under a flood"


def _accepted(pid: int, client: socket.socket) -> bool:
    here = client.getsockname()
    return any(c.raddr and tuple(c.raddr) == here
               for c in psutil.Process(pid).net_connections(kind="tcp"))


def test_a_trickling_client_does_not_hold_off_the_stop(
        procs: list[subprocess.Popen[bytes]]) -> None:
    """One client sends a byte every half second and never completes its request; another
    completes its request during the stop. The second is answered; the first is cut once
    the drain (``agent.health.DRAIN_S``) is over, and the agent exits: the per-read timeout alone
    never expired."""
    port = free_port()
    agent = run_agent(procs, port=port)
    wait_until(lambda: agent_health(health_url(port)), 30, "the agent")
    slow, late = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
    try:
        with trickled_request(slow, 0.5):
            wait_until(lambda: _accepted(agent.pid, slow) and _accepted(agent.pid, late), 10,
                       "both connections accepted")
            started = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            late.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            late.settimeout(10)
            answer = b""
            while chunk := late.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 200 "), answer
            assert agent.wait(20) == 0
            took = time.monotonic() - started
    finally:
        slow.close()
        late.close()
    assert took < 5.0, f"stopped {took:.1f}s after SIGTERM"  # DRAIN_S is 2 s
