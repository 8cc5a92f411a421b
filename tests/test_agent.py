"""The agent: --version, /healthz, signals, nginx probing, exit codes (real processes)."""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unavailable

from agent import exit_codes
from agent.cli import parse_host_port
from agent.health import HealthServer, arrived_whole, health_payload
from agent.nginx import probe_nginx
from agent.version import DEV_VERSION

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import build_agent  # noqa: E402 (packaging/ is not a package: found via the path above)

BUILT_VERSION = "0.4.2"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ agent (INFO|WARNING|ERROR) .+$")
URL_LINE = re.compile(r"health endpoint listening on (http://\S+/healthz)")


def source_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent.build_agent(BUILT_VERSION, tmp_path_factory.mktemp("built") / "agent")


class Agent:
    """A running agent whose stderr lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = 5.0) -> re.Match[str]:
        """Poll the log until a line matches ``pattern``, or fail at the deadline."""
        regex = re.compile(pattern)
        for line in self.lines:
            if found := regex.search(line):
                return found
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                break
            self.lines.append(item)
            if found := regex.search(item):
                return found
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def url(self) -> str:
        return self.wait_for(URL_LINE.pattern).group(1)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=5)
        return code, time.monotonic() - started


@pytest.fixture
def spawn() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        for stream in (agent.proc.stdout, agent.proc.stderr):
            if stream is not None:
                stream.close()


def start(spawn: list[Agent], argv: list[str], env: dict[str, str] | None = None) -> Agent:
    agent = Agent(argv, env or source_env())
    spawn.append(agent)
    return agent


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_version_from_source_is_dev_version() -> None:
    """From source, --version prints the dev version and nothing else."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        env=source_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{DEV_VERSION}\n", "")


def test_built_version_is_baked_in(built: Path) -> None:
    """The built artifact, run as an executable, prints the version it was built with."""
    done = subprocess.run([str(built), "--version"], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{BUILT_VERSION}\n", "")


def test_healthz_reports_the_built_version(built: Path, spawn: list[Agent]) -> None:
    """/healthz answers 200 with the --version string; other paths 404; SIGTERM exits 0 fast."""
    version = subprocess.run(
        [sys.executable, str(built), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    agent = start(
        spawn,
        [
            sys.executable,
            str(built),
            "run",
            "--health-addr",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "0.1",
        ],
    )
    agent.wait_for(rf"nginx-manager-agent {re.escape(version)} starting \(pid {agent.proc.pid}\)")
    url = agent.url()
    status, body = get(url)
    payload = json.loads(body)
    assert status == 200
    assert payload["status"] == "ok"
    assert payload["version"] == version == BUILT_VERSION
    assert payload["pid"] == agent.proc.pid
    assert payload["uptime_s"] >= 0
    assert get(url.removesuffix("/healthz") + "/nope")[0] == 404
    agent.wait_for(r"heartbeat: version 0\.4\.2, uptime")
    code, took_s = agent.stop(signal.SIGTERM)
    assert code == exit_codes.STOPPED
    assert took_s < 1.0
    agent.wait_for(r"stopping on SIGTERM")
    assert all(LOG_LINE.match(line) for line in agent.lines), agent.lines


def test_sigint_stops_cleanly(spawn: list[Agent]) -> None:
    """SIGINT ends the agent with exit 0, like SIGTERM."""
    agent = start(spawn, [sys.executable, "-m", "agent", "--health-addr", "127.0.0.1:0"])
    agent.url()
    code, took_s = agent.stop(signal.SIGINT)
    assert (code, took_s < 1.0) == (0, True)
    agent.wait_for("stopping on SIGINT")


def test_runs_without_nginx(spawn: list[Agent], tmp_path: Path) -> None:
    """With no nginx on PATH the agent logs it and keeps serving."""
    agent = start(
        spawn,
        [sys.executable, "-m", "agent", "run", "--health-addr", "127.0.0.1:0"],
        source_env(PATH=str(tmp_path)),
    )
    url = agent.url()
    agent.wait_for("nginx not found")
    assert get(url)[0] == 200
    assert agent.proc.poll() is None
    assert agent.stop()[0] == 0


def test_reports_nginx_on_path(spawn: list[Agent], tmp_path: Path) -> None:
    """A (fake) nginx on PATH is probed with -v and -t and the findings logged."""
    fake = tmp_path / "nginx"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -v ]; then echo "nginx version: nginx/1.99.0" >&2; exit 0; fi\n'
        'echo "nginx: configuration file /etc/nginx/nginx.conf test is successful" >&2\n'
    )
    fake.chmod(0o755)
    agent = start(
        spawn,
        [sys.executable, "-m", "agent", "--health-addr", "127.0.0.1:0"],
        source_env(PATH=f"{tmp_path}:/usr/bin:/bin"),
    )
    agent.wait_for(r"nginx found at .*/nginx: nginx version: nginx/1\.99\.0")
    agent.wait_for(r"nginx config test passed: .*test is successful")
    assert agent.stop()[0] == 0


def test_bad_health_addr_is_a_usage_error() -> None:
    """A malformed --health-addr exits 2 with a message naming the option."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--health-addr", "no-port"],
        env=source_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == exit_codes.USAGE_ERROR
    assert "--health-addr" in done.stderr


def test_address_in_use_is_a_startup_failure() -> None:
    """A health address already taken exits 3 and says so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "agent", "--health-addr", f"127.0.0.1:{port}"],
            env=source_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    assert done.returncode == exit_codes.STARTUP_FAILURE
    assert f"cannot bind health address 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8091", ("127.0.0.1", 8091)), ("[::1]:0", ("::1", 0)), ("h:1", ("h", 1))],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["8091", ":8091", "host:", "host:x", "host:70000"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
        parse_host_port(text)


def test_health_payload() -> None:
    assert health_payload("1.0", 7, 1.23456) == {
        "status": "ok",
        "version": "1.0",
        "pid": 7,
        "uptime_s": 1.235,
    }


def test_arrived_whole_peeks_for_a_complete_head() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert not arrived_whole(b)
        a.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert not arrived_whole(b)
        a.sendall(b"\r\n")
        assert arrived_whole(b)
        assert b.recv(100).startswith(b"GET /healthz"), "the peek consumed nothing"
        a.close()
        assert not arrived_whole(b)  # the client left: nothing to answer inline


def test_whole_requests_need_no_thread_and_a_trickler_holds_up_nobody(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests queued whole before the server starts are answered by its serve thread,
    one thread started for none of them; a client that sent half its head gets a thread,
    and the whole requests behind it are answered while it waits."""
    import socketserver

    threads: list[object] = []
    real = socketserver.ThreadingMixIn.process_request

    def counted(self: object, request: object, client: object) -> None:
        threads.append(request)
        real(self, request, client)  # type: ignore[arg-type]

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", counted)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    for c in clients:
        c.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    server = HealthServer("127.0.0.1", 0, "1.2.3", sock=listener)
    server.start()
    try:
        for c in clients:
            c.settimeout(5)
            answer = b""
            while chunk := c.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 200 ") and b'"1.2.3"' in answer, answer
        assert len(threads) == 1, threads  # the slow one only
    finally:
        for c in [slow, *clients]:
            c.close()
        server.stop()


def test_probe_nginx_timeout_is_a_finding() -> None:
    """A hanging nginx is reported, never raised."""

    def hang(argv: list[str], timeout_s: float) -> tuple[int, str]:
        raise subprocess.TimeoutExpired(argv, timeout_s)

    report = probe_nginx(which=lambda name: "/sbin/nginx", run=hang, timeout_s=2)
    assert report.path == "/sbin/nginx"
    assert report.config_ok is None
    assert "timed out" in report.detail


def test_probe_nginx_config_failure() -> None:
    outputs = {"-v": (0, "nginx version: nginx/1.2.3"), "-t": (1, "a\nnginx: test failed\n")}
    report = probe_nginx(which=lambda name: "/x/nginx", run=lambda argv, t: outputs[argv[1]])
    assert (report.version, report.config_ok, report.detail) == (
        "nginx version: nginx/1.2.3",
        False,
        "nginx: test failed",
    )


def _can_unshare_pid() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "-fp", "true"], capture_output=True, check=False)
    return done.returncode == 0


def test_sigterm_as_pid_1(spawn: list[Agent]) -> None:
    """As PID 1 (no default signal handling from the kernel) SIGTERM still ends it with 0."""
    if not _can_unshare_pid():
        unavailable("needs unshare of a PID namespace")
    agent = start(
        spawn,
        [
            "unshare",
            "-fp",
            "--kill-child",
            sys.executable,
            "-m",
            "agent",
            "--health-addr",
            "127.0.0.1:0",
        ],
    )
    agent.wait_for(r"starting \(pid 1\)")
    agent.url()
    children = Path(f"/proc/{agent.proc.pid}/task/{agent.proc.pid}/children")
    inner = int(children.read_text().split()[0])
    os.kill(inner, signal.SIGTERM)
    assert agent.proc.wait(timeout=5) == 0
    agent.wait_for("stopping on SIGTERM")
