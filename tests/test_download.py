"""Downloads: stream, cap, hash and limits, against a real server and in-memory transports."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import unavailable
from release_server import ReleaseServer, Route

from launcher.download import TEMP_PREFIX, SpeedWindow, download
from launcher.errors import (
    ChecksumError,
    DownloadError,
    HostError,
    InsecureError,
    TransportError,
)
from launcher.sources.http import make_client

DATA = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[ReleaseServer]:
    with ReleaseServer() as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(timeout_s=5, allow_http=True) as http_client:
        yield http_client


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def fetch(client: httpx.Client, url: str, dest: Path, **overrides: object) -> Path:
    # The limits, one request each, with nothing kept on failure; resuming is in test_resume.
    options: dict[str, object] = {"expected_sha256": SHA, "expected_size": len(DATA),
                                  "resume": False}
    options.update(overrides)
    return download(client, url, dest, **options)  # type: ignore[arg-type]


class Drip(httpx.SyncByteStream):
    """A body produced chunk by chunk, counting what the client pulled."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.pulled += len(chunk)
            yield chunk


def serving(stream: httpx.SyncByteStream, headers: dict[str, str] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream, headers=headers)

    return make_client(transport=httpx.MockTransport(handler))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_good_download(server: ReleaseServer, client: httpx.Client, tmp_path: Path) -> None:
    server.publish("/bin/agent", Route(body=DATA))
    path = fetch(client, server.url("/bin/agent"), tmp_path)
    assert path.parent == tmp_path and path.name.startswith(TEMP_PREFIX)
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert leftovers(tmp_path) == [path.name]


def test_good_download_without_size_or_content_length(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(body=DATA, behaviour="close"))
    path = fetch(
        client, server.url("/bin/agent"), tmp_path, expected_size=None, expected_sha256=SHA.upper()
    )
    assert path.read_bytes() == DATA


def test_checksum_mismatch_removes_the_temp_file(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(body=DATA))
    url = server.url("/bin/agent")
    with pytest.raises(ChecksumError) as caught:
        fetch(client, url, tmp_path, expected_sha256="0" * 64)
    assert str(caught.value) == f"sha256 mismatch for {url}: expected {'0' * 64}, got {SHA}"
    assert caught.value.kind == "sha256"
    assert leftovers(tmp_path) == []


def test_truncated_body(server: ReleaseServer, client: httpx.Client, tmp_path: Path) -> None:
    server.publish(
        "/bin/agent", Route(body=DATA[:1000], behaviour="truncate", declared_length=len(DATA))
    )
    with pytest.raises(DownloadError) as caught:
        fetch(client, server.url("/bin/agent"), tmp_path, expected_size=None)
    assert str(caught.value) == f"truncated download: got 1000 of {len(DATA)} bytes"
    assert leftovers(tmp_path) == []


def test_short_body_against_the_manifest_size(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(body=DATA[:-1], behaviour="close"))
    with pytest.raises(DownloadError, match=f"truncated download: got {len(DATA) - 1} of"):
        fetch(client, server.url("/bin/agent"), tmp_path)
    assert leftovers(tmp_path) == []


def test_too_large_is_cut_at_size_plus_one(tmp_path: Path) -> None:
    drip = Drip(iter([b"x"] * 10_000))
    with serving(drip) as client, pytest.raises(DownloadError) as caught:
        fetch(client, "https://u.example/agent", tmp_path, expected_size=100)
    assert str(caught.value) == "download of https://u.example/agent is larger than 100 bytes"
    assert drip.pulled == 101
    assert leftovers(tmp_path) == []


def test_too_large_content_length_refused_before_the_body(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(body=DATA + b"!"))
    with pytest.raises(DownloadError, match=r"larger than 16384 bytes \(Content-Length 16385\)"):
        fetch(client, server.url("/bin/agent"), tmp_path)
    assert leftovers(tmp_path) == []


def test_endless_body_stops_at_max_bytes(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(behaviour="endless"))
    with pytest.raises(DownloadError, match="larger than 1000000 bytes"):
        fetch(client, server.url("/bin/agent"), tmp_path, expected_size=None, max_bytes=1_000_000)
    assert leftovers(tmp_path) == []


def test_manifest_size_above_the_global_cap_is_refused(tmp_path: Path) -> None:
    with serving(Drip(iter([DATA]))) as client, pytest.raises(DownloadError) as caught:
        fetch(client, "https://u.example/agent", tmp_path, max_bytes=10)
    assert str(caught.value) == f"binary of {len(DATA)} bytes exceeds the limit of 10 bytes"


def test_trickle_is_aborted_by_minimum_speed(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    """A real server dripping ~2.5 KB/s against a 10 KB/s minimum over a 0.3 s window."""
    server.publish(
        "/bin/agent", Route(body=DATA, behaviour="trickle", chunk_bytes=50, interval_s=0.02)
    )
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"too slow: \d+ B/s over the last 0.3s"):
        fetch(client, server.url("/bin/agent"), tmp_path, min_speed_bps=10_000, speed_window_s=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert leftovers(tmp_path) == []


def test_trickle_is_aborted_at_the_deadline(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish(
        "/bin/agent", Route(body=DATA, behaviour="trickle", chunk_bytes=10, interval_s=0.02)
    )
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"exceeded its deadline of 0.5s \(\d+ bytes"):
        fetch(client, server.url("/bin/agent"), tmp_path, deadline_s=0.5, min_speed_bps=0)
    assert 0.5 <= time.monotonic() - started < 1.5
    assert leftovers(tmp_path) == []


def test_silent_server_is_caught_by_the_read_timeout(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    """Headers, then nothing: the per-read timeout is capped by the speed window."""
    server.publish("/bin/agent", Route(body=DATA, behaviour="stall"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled: no data for 0.3s"):
        fetch(client, server.url("/bin/agent"), tmp_path, speed_window_s=0.3)
    assert time.monotonic() - started < 1.5
    assert leftovers(tmp_path) == []


def test_deadline_with_an_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()

    def chunks() -> Iterator[bytes]:
        while True:
            clock.now += 1.0
            yield b"x" * 100_000

    with serving(Drip(chunks())) as client, pytest.raises(DownloadError) as caught:
        fetch(
            client,
            "https://u.example/agent",
            tmp_path,
            expected_size=None,
            deadline_s=5,
            clock=clock,
        )
    assert "exceeded its deadline of 5s (500000 bytes received)" in str(caught.value)


def test_speed_is_judged_only_over_a_full_window(tmp_path: Path) -> None:
    clock = FakeClock()
    times: list[float] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            clock.now += 1.0
            times.append(clock.now)
            yield b"x" * 10  # 10 B/s against a 100 B/s minimum

    with serving(Drip(chunks())) as client, pytest.raises(DownloadError, match="too slow"):
        fetch(
            client,
            "https://u.example/agent",
            tmp_path,
            expected_size=None,
            min_speed_bps=100,
            speed_window_s=30,
            clock=clock,
        )
    assert times[-1] == 130.0  # not before the first 30 s had passed


def test_speed_window_forgets_a_fast_start() -> None:
    window = SpeedWindow(10, start=0)
    assert window.speed(5, 1_000_000) is None
    window.record(5, 1_000_000)
    window.record(15, 1_000_010)
    window.record(20, 1_000_020)
    assert window.speed(20, 1_000_020) == pytest.approx(2.0)


def test_should_stop_cancels(tmp_path: Path) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with (
        serving(Drip(iter([b"x"] * 100))) as client,
        pytest.raises(DownloadError) as caught,
    ):
        fetch(
            client, "https://u.example/agent", tmp_path, expected_size=None, should_stop=should_stop
        )
    assert str(caught.value) == "download cancelled"
    assert leftovers(tmp_path) == []


def test_interrupt_removes_the_temp_file(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 10
        raise KeyboardInterrupt

    with serving(Drip(chunks())) as client, pytest.raises(KeyboardInterrupt):
        fetch(client, "https://u.example/agent", tmp_path, expected_size=None)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("status", "words"), [(500, "Internal Server Error"), (404, "Not Found")])
def test_http_error_status(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path, status: int, words: str
) -> None:
    server.publish("/bin/agent", Route(status=status, body=b"no"))
    url = server.url("/bin/agent")
    with pytest.raises(TransportError) as caught:
        fetch(client, url, tmp_path)
    assert str(caught.value) == f"download of {url} failed: HTTP {status} {words}"
    assert leftovers(tmp_path) == []


def test_rate_limited_download_carries_retry_after(
    server: ReleaseServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.publish("/bin/agent", Route(status=503, headers={"Retry-After": "30"}))
    with pytest.raises(TransportError) as caught:
        fetch(client, server.url("/bin/agent"), tmp_path)
    assert caught.value.retry_after_s == 30


def test_connection_refused(client: httpx.Client, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/agent"
        with pytest.raises(TransportError, match="connection refused"):
            fetch(client, url, tmp_path)
    assert leftovers(tmp_path) == []


def test_plain_http_refused(server: ReleaseServer, tmp_path: Path) -> None:
    server.publish("/bin/agent", Route(body=DATA))
    with make_client() as strict, pytest.raises(InsecureError):
        fetch(strict, server.url("/bin/agent"), tmp_path)
    assert server.requests == []
    assert leftovers(tmp_path) == []


def test_missing_dest_dir_is_a_host_error(client: httpx.Client, tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"cannot create a temporary file in .*No such file"):
        fetch(client, "https://u.example/agent", tmp_path / "missing")


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            unavailable(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_full_disk_is_a_host_error(
    server: ReleaseServer, client: httpx.Client, mount_tmpfs: Callable[[str], Path]
) -> None:
    tiny = mount_tmpfs("size=64k")
    big = DATA * 16  # 256 KiB
    server.publish("/bin/agent", Route(body=big))
    with pytest.raises(HostError, match="No space left on device"):
        fetch(
            client,
            server.url("/bin/agent"),
            tiny,
            expected_size=len(big),
            expected_sha256=hashlib.sha256(big).hexdigest(),
        )
    assert leftovers(tiny) == []


def test_full_disk_discards_a_resumable_partial_too(
    server: ReleaseServer, client: httpx.Client, mount_tmpfs: Callable[[str], Path]
) -> None:
    tiny = mount_tmpfs("size=64k")
    big = DATA * 16
    server.publish("/bin/agent", Route(body=big))
    with pytest.raises(HostError, match="No space left on device"):
        fetch(client, server.url("/bin/agent"), tiny, expected_size=len(big),
              expected_sha256=hashlib.sha256(big).hexdigest(), resume=True)
    assert leftovers(tiny) == []


def test_read_only_dest_dir_is_a_host_error(
    client: httpx.Client, mount_tmpfs: Callable[[str], Path]
) -> None:
    read_only = mount_tmpfs("ro,size=64k")
    with pytest.raises(HostError, match="Read-only file system"):
        fetch(client, "https://u.example/agent", read_only)


def test_copy_local_verifies_like_a_download(tmp_path: Path) -> None:
    """A file:// binary goes through the same cap, hash and temp-file rules."""
    from launcher.download import copy_local

    src = tmp_path / "agent"
    src.write_bytes(b"x" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "bin"
    dest.mkdir()
    staged = copy_local(src, dest, expected_sha256=sha, expected_size=1000)
    assert staged.read_bytes() == src.read_bytes() and os.access(staged, os.X_OK)
    staged.unlink()
    with pytest.raises(ChecksumError):
        copy_local(src, dest, expected_sha256="0" * 64, expected_size=None)
    with pytest.raises(DownloadError, match="larger than 999"):
        copy_local(src, dest, expected_sha256=sha, expected_size=999)
    with pytest.raises(DownloadError, match="truncated"):
        copy_local(src, dest, expected_sha256=sha, expected_size=2000)
    assert list(dest.iterdir()) == []
