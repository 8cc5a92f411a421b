"""The update server: files, ETag / If-None-Match, If-Modified-Since, SIGTERM (real server)."""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import update_server  # noqa: E402 (packaging/ is not a package: found via the path above)

SERVING = re.compile(r"^serving (\S+) on http://127\.0\.0\.1:(\d+)$")


class Server:
    """A running update server; ``port`` is read from its first stdout line."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHON=sys.executable)
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        first = lines.get(timeout=10).rstrip("\n")
        match = SERVING.match(first)
        assert match, f"unexpected first line {first!r}"
        self.directory = Path(match.group(1))
        self.port = int(match.group(2))

    def request(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=5)
        return self.proc.returncode, err


@pytest.fixture
def release(tmp_path: Path) -> Path:
    directory = tmp_path / "release"
    (directory / "bin" / "0.1.2").mkdir(parents=True)
    (directory / "version.json").write_text('{"version": "0.1.2"}\n')
    (directory / "bin" / "0.1.2" / "agent-linux-amd64").write_bytes(os.urandom(300_000))
    return directory


@pytest.fixture
def server(release: Path) -> Iterator[Server]:
    argv = [
        sys.executable,
        str(ROOT / "packaging" / "update_server.py"),
        "--dir",
        str(release),
        "--port",
        "0",
    ]
    running = Server(argv, release.parent)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.communicate()


def test_serves_files(server: Server, release: Path) -> None:
    """Files come back whole; the manifest is no-cache, every file has a strong ETag."""
    assert server.directory == release.resolve()
    status, headers, body = server.request("/version.json")
    assert (status, body) == (200, b'{"version": "0.1.2"}\n')
    assert headers["Cache-Control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f-]+"', headers["ETag"])
    binary = release / "bin" / "0.1.2" / "agent-linux-amd64"
    status, headers, body = server.request("/bin/0.1.2/agent-linux-amd64")
    assert (status, body) == (200, binary.read_bytes())
    assert "Cache-Control" not in headers
    assert "ETag" in headers
    assert server.request("/bin/0.1.2/agent-linux-arm64")[0] == 404
    code, err = server.stop()
    assert code == 0
    assert re.search(r'update-server INFO 127\.0\.0\.1 "GET /version\.json HTTP/1\.1" 200', err)
    assert len(re.findall(r"agent-linux-arm64", err)) == 1, "one log line per request"


def test_if_none_match(server: Server, release: Path) -> None:
    """A matching If-None-Match gets 304; a replaced file gets a new ETag and a 200."""
    _, headers, _ = server.request("/version.json")
    etag = headers["ETag"]
    status, headers, body = server.request("/version.json", If_None_Match=etag)
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    assert server.request("/version.json", If_None_Match=f'"x", W/{etag}')[0] == 304
    assert server.request("/version.json", If_None_Match='"other"')[0] == 200
    replacement = release / ".version.json.tmp"
    replacement.write_text('{"version": "0.1.3"}\n')
    os.replace(replacement, release / "version.json")
    status, headers, body = server.request("/version.json", If_None_Match=etag)
    assert (status, body) == (200, b'{"version": "0.1.3"}\n')
    assert headers["ETag"] != etag


def test_if_modified_since(server: Server) -> None:
    """The standard Last-Modified / If-Modified-Since handling is kept."""
    _, headers, _ = server.request("/bin/0.1.2/agent-linux-amd64")
    status, _, body = server.request(
        "/bin/0.1.2/agent-linux-amd64", If_Modified_Since=headers["Last-Modified"]
    )
    assert (status, body) == (304, b"")
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert server.request("/bin/0.1.2/agent-linux-amd64", If_Modified_Since=old)[0] == 200


def test_wrapper_with_dir_and_port(release: Path) -> None:
    """scripts/update-server.sh passes --dir and --port through; SIGTERM exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = Server(
        [str(ROOT / "scripts" / "update-server.sh"), "--dir", "release", "--port", str(port)],
        release.parent,
    )
    try:
        assert (started.port, started.directory) == (port, release.resolve())
        assert started.request("/version.json")[0] == 200
        begun = time.monotonic()
        code, _ = started.stop()
        assert code == 0
        assert time.monotonic() - begun < 2
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.communicate()


@pytest.mark.parametrize(
    ("header", "expected"),
    [('"a"', True), ('W/"a"', True), ('"b", "a"', True), ("*", True), ('"b"', False)],
)
def test_etag_matches(header: str, expected: bool) -> None:
    assert update_server.etag_matches(header, '"a"') is expected
