"""Download progress: the pacing of its log lines (injected clock) and the transfer that
``status`` shows while a real launcher downloads from a real slow server."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Launcher, run_cli, wait_until
from hostile import agent_pid, manifest_for, quick_args, sleeper, start
from range_server import RangeServer
from release_server import ReleaseServer, Route

from launcher.download import download
from launcher.progress import TRANSFER_FILE, Progress, read_transfer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_ten_seconds_or_ten_percent(caplog: pytest.LogCaptureFixture,
                                                 tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="launcher.download")
    clock = Clock()
    total = 1000
    progress = Progress("http://x/agent", total, clock=clock, file=tmp_path / TRANSFER_FILE)
    progress.begin(0)
    # Slow: 1 byte a second for 25 s, far below 10%: lines at 10 s and 20 s only.
    for i in range(1, 26):
        clock.now += 1
        progress.update(i)
    assert progress.lines == 2
    assert "downloading http://x/agent: 0.0 MiB of 0.0 MiB (2%)" in caplog.text
    assert "about 16 min left" in caplog.text  # 990 bytes at 1 B/s
    # Fast: the rest in 30 steps within one second: a line at each 10% crossed.
    for step in range(1, 31):
        clock.now += 0.03
        progress.update(25 + step * 975 // 30)
    assert progress.lines == 2 + 10

    snapshot = json.loads((tmp_path / TRANSFER_FILE).read_text())
    assert snapshot["total"] == total and snapshot["url"] == "http://x/agent"
    progress.close()
    assert not (tmp_path / TRANSFER_FILE).exists()


def test_a_quick_download_is_not_narrated() -> None:
    clock = Clock()
    progress = Progress("u", 100, clock=clock)
    progress.begin(0)
    for i in range(1, 11):
        clock.now += 0.1
        progress.update(i * 10)
    assert progress.lines == 0


def test_download_reports_through_the_injected_clock(tmp_path: Path) -> None:
    data = b"x" * 200_000
    clock = Clock()

    def answer(request: httpx.Request) -> httpx.Response:
        def body() -> httpx.SyncByteStream:
            class Slow(httpx.SyncByteStream):
                def __iter__(self):  # type: ignore[no-untyped-def]
                    for i in range(0, len(data), 10_000):
                        clock.now += 3.0  # 10 kB every 3 s
                        yield data[i:i + 10_000]
            return Slow()
        return httpx.Response(200, stream=body(), headers={"Content-Length": str(len(data))})

    progress = Progress("u", len(data), clock=clock)
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        download(client, "http://example.test/agent", tmp_path,
                 expected_sha256=hashlib.sha256(data).hexdigest(), expected_size=len(data),
                 clock=clock, progress=progress, min_speed_bps=0)
    # 20 chunks, 3 s apart, 5% each: a line at every 10% (each 2nd chunk), none more.
    assert progress.lines == 10
    assert progress.rate(clock.now) == pytest.approx(200_000 / 60.0)


def test_status_shows_the_transfer_in_flight(launcher: Callable[..., Launcher],
                                             tmp_path: Path) -> None:
    new = sleeper(tmp_path, "0.2.0", pad=3 << 20).read_bytes()
    with ReleaseServer() as meta, RangeServer(new) as slow:
        slow.rate_bps = 512 << 10  # about 6 s for the build
        meta.publish("/version.json", Route(body=manifest_for("0.2.0", slow.url(), new)))
        lch = launcher()
        start(lch, quick_args(meta.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                              **{"--download-deadline": "60"}), "0.1.0")

        def in_flight() -> dict[str, object] | None:
            out = run_cli("status", "--json", "--state-dir", str(lch.state_dir))
            transfer = json.loads(out.stdout)["transfer"]
            return transfer if transfer and transfer["received"] else None

        transfer = wait_until(in_flight, timeout=30, what="a transfer in status --json")
        assert transfer["version"] == "0.2.0" and transfer["kind"] == "full"
        assert transfer["total"] == len(new) and transfer["url"] == slow.url()
        text = run_cli("status", "--state-dir", str(lch.state_dir)).stdout
        assert "transfer:    0.2.0: " in text and f"of {len(new) / (1 << 20):.1f} MiB" in text
        agent_pid(lch, "0.2.0", timeout=60)
        assert read_transfer(lch.state_dir) is None
        assert not (lch.state_dir / TRANSFER_FILE).exists()
        assert "downloading " + slow.url() in lch.log()
        assert lch.stop() == 0


def test_a_transfer_file_left_behind_is_not_shown(tmp_path: Path) -> None:
    progress = Progress("u", 10, file=tmp_path / TRANSFER_FILE)
    progress.begin(0)
    assert read_transfer(tmp_path) is not None  # this process is alive and it is fresh
    data = json.loads((tmp_path / TRANSFER_FILE).read_text())
    (tmp_path / TRANSFER_FILE).write_text(json.dumps({**data, "pid": 2**22 + 1}))
    assert read_transfer(tmp_path) is None  # no such process
    (tmp_path / TRANSFER_FILE).write_text(json.dumps({**data, "updated": "2026-01-01T00:00:00Z"}))
    assert read_transfer(tmp_path) is None  # not rewritten for too long
    (tmp_path / TRANSFER_FILE).write_text("{not json")
    assert read_transfer(tmp_path) is None
