"""Slow retrieval of metadata: the manifest, its signature, the GitHub API answer and
SHA256SUMS each have an overall deadline and the minimum-speed rule, like the binary, against
real servers on loopback that trickle or stall."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Launcher
from hostile import agent_pid, assert_untouched, quick_args, sleeper
from release_server import ReleaseServer, Route
from signing import make_key, sign

from launcher import worker
from launcher.download import download
from launcher.errors import DownloadError, TransportError
from launcher.settings import Settings
from launcher.sources.github import GitHubSource
from launcher.sources.http import HttpSource, make_client
from launcher.sources.pace import Alarm

SHA = "a" * 64
REPO = "acme/agent"


def manifest(srv: ReleaseServer) -> bytes:
    entry = {"url": srv.url("/bin/agent"), "sha256": SHA}
    return json.dumps({"version": "0.1.2", "binaries": {"linux-amd64": entry},
                       "notes": "x" * 2000}).encode()


def trickle(body: bytes) -> Route:
    return Route(body=body, behaviour="trickle", chunk_bytes=1, interval_s=0.05)


def run(srv: ReleaseServer, tmp_path: Path, **settings: Any) -> tuple[worker.Result, float]:
    s = Settings(manifest_url=srv.url("/version.json"), platform="linux-amd64",
                 state_dir=tmp_path, allow_http=True, metadata_deadline_s=1.0,
                 **settings).for_worker()
    started = time.monotonic()
    result = worker.run_check({"settings": s, "current": None, "bad": [], "host_id": "h",
                               "stage": False})
    return result, time.monotonic() - started


def test_trickled_manifest_hits_its_deadline(tmp_path: Path) -> None:
    with ReleaseServer() as srv:
        srv.publish("/version.json", trickle(manifest(srv)))
        result, took = run(srv, tmp_path, allow_unsigned=True)
    assert result.error_kind == "transport", result
    assert "manifest request to" in str(result.error)
    assert "exceeded its deadline of 1s" in str(result.error)
    assert took < 3.0


def test_stalled_manifest_hits_its_deadline(tmp_path: Path) -> None:
    """Headers, then nothing: each read's timeout is capped at the deadline."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=manifest(srv), behaviour="stall"))
        result, took = run(srv, tmp_path, allow_unsigned=True)
    assert result.error_kind == "transport" and "timed out" in str(result.error), result
    assert took < 3.0


def test_trickled_signature_hits_its_deadline(tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "release")
    with ReleaseServer() as srv:
        body = manifest(srv)
        srv.publish("/version.json", Route(body=body))
        srv.publish("/version.json.minisig", trickle(sign(body, key)))
        result, took = run(srv, tmp_path, public_keys=(key.public,))
    assert result.error_kind == "transport", result
    assert "signature request to" in str(result.error)
    assert "exceeded its deadline of 1s" in str(result.error)
    assert took < 3.0


def slow_headers() -> Route:
    """A status line, then a header byte every 0.3 s: each read succeeds, none completes."""
    return Route(behaviour="trickle-headers", interval_s=0.3)


def test_trickled_manifest_headers_hit_the_deadline(tmp_path: Path) -> None:
    """httpx reads the status line and headers itself, one read timeout per byte: the
    deadline must end the request there too, not only between reads of the body."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", slow_headers())
        result, took = run(srv, tmp_path, allow_unsigned=True)
    assert result.error_kind == "transport", result
    assert "manifest request to" in str(result.error)
    assert "exceeded its deadline of 1s (no complete answer)" in str(result.error)
    assert took < 3.0


def test_trickled_signature_headers_hit_the_deadline(tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "release")
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=manifest(srv)))
        srv.publish("/version.json.minisig", slow_headers())
        result, took = run(srv, tmp_path, public_keys=(key.public,))
    assert result.error_kind == "transport", result
    assert "signature request to" in str(result.error)
    assert "exceeded its deadline of 1s" in str(result.error)
    assert took < 3.0


def test_trickled_binary_headers_hit_the_deadline(tmp_path: Path) -> None:
    with ReleaseServer() as srv, make_client(allow_http=True) as client:
        srv.publish("/bin/agent", slow_headers())
        started = time.monotonic()
        with pytest.raises(DownloadError, match="exceeded its deadline of 1s"):
            download(client, srv.url("/bin/agent"), tmp_path, expected_sha256=SHA,
                     expected_size=None, deadline_s=1.0)
    assert time.monotonic() - started < 3.0
    assert list(tmp_path.iterdir()) == []


def test_the_deadline_alarm_leaves_an_outer_one_armed() -> None:
    """Nested deadlines: the inner block restores the outer alarm with what is left of it;
    the outermost block gives back whatever was armed before it (pytest-timeout's alarm)."""
    handler = signal.getsignal(signal.SIGALRM)
    before, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    with pytest.raises(TransportError, match="outer"), \
            Alarm(0.6, lambda: TransportError("outer")):
        with Alarm(5.0, lambda: TransportError("inner")):
            pass
        time.sleep(2.0)
    assert time.monotonic() - started < 1.5
    assert signal.getsignal(signal.SIGALRM) == handler
    after, _ = signal.getitimer(signal.ITIMER_REAL)
    if before == 0:
        assert after == 0
    else:
        assert before - 2.0 < after < before


def test_an_outer_deadline_due_first_fires_first() -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="outer"), \
            Alarm(0.3, lambda: TransportError("outer")), \
            Alarm(5.0, lambda: TransportError("inner")):
        time.sleep(3.0)
    assert time.monotonic() - started < 1.5


def test_a_swallowed_deadline_fires_again() -> None:
    """Code that catches the deadline's error (``logging`` does, in ``emit``) does not end
    the bound: the alarm repeats until the block is left."""
    started = time.monotonic()
    with pytest.raises(TransportError, match="late"), \
            Alarm(0.2, lambda: TransportError("late")):
        with contextlib.suppress(TransportError):
            time.sleep(2.0)
        time.sleep(3.0)
    assert time.monotonic() - started < 1.5


def test_a_redirect_after_a_swallowed_deadline_is_still_bounded(tmp_path: Path) -> None:
    """The review's case: the alarm lands while httpx logs the redirect (a blocked stderr:
    ``logging`` swallows the error), then the next hop trickles its headers."""

    class SlowStream(io.StringIO):
        def write(self, text: str) -> int:
            if "302" in text:
                time.sleep(1.5)  # a full pipe: the deadline passes inside this write
            return super().write(text)

    handler = logging.StreamHandler(SlowStream())
    http_log = logging.getLogger("httpx")
    level = http_log.level
    http_log.addHandler(handler)
    http_log.setLevel(logging.INFO)
    try:
        with ReleaseServer() as srv, make_client(allow_http=True) as client:
            srv.publish("/version.json", Route.redirect(srv.url("/real.json")))
            srv.publish("/real.json", slow_headers())
            source = HttpSource(srv.url("/version.json"), client=client, deadline_s=1.0)
            started = time.monotonic()
            with pytest.raises(TransportError, match="exceeded its deadline of 1s"):
                source.fetch(None)
            assert time.monotonic() - started < 3.0
    finally:
        http_log.removeHandler(handler)
        http_log.setLevel(level)
    assert signal.getsignal(signal.SIGALRM) != Alarm._expire


def test_an_alarm_at_any_instant_gives_the_handler_back() -> None:
    """Thousands of blocks whose deadline lands anywhere, ``__enter__`` and ``__exit__``
    included: afterwards the previous handler and timer are back."""
    handler = signal.getsignal(signal.SIGALRM)
    before, _ = signal.getitimer(signal.ITIMER_REAL)
    raised = 0
    for i in range(2000):
        # The alarm due at 0-1.8 ms, the block busy for 0-1.2 ms: it lands before, inside
        # and just after the block, in the alarm's own enter and exit among them.
        spin = time.monotonic() + 0.0002 * (i % 7)
        try:
            with Alarm(0.0002 * (i % 10), lambda: TransportError("x")):
                while time.monotonic() < spin:
                    pass
        except TransportError:
            raised += 1
    time.sleep(Alarm.REPEAT_S * 2)  # a late firing would raise here
    assert raised > 0
    assert signal.getsignal(signal.SIGALRM) == handler
    after, _ = signal.getitimer(signal.ITIMER_REAL)
    assert (after == 0) if before == 0 else (before - 30 < after <= before)


def test_minimum_speed_applies_to_metadata(tmp_path: Path) -> None:
    """Below the minimum average speed over the window: refused before the deadline."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", trickle(manifest(srv)))
        with make_client(allow_http=True) as client:
            source = HttpSource(srv.url("/version.json"), client=client, deadline_s=60,
                                min_speed_bps=1000, speed_window_s=0.5)
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"too slow: \d+ B/s over the last 0.5s"):
                source.fetch(None)
    assert time.monotonic() - started < 3.0


def release_json(srv: ReleaseServer, sums: bool) -> bytes:
    asset = {"name": "agent-linux-amd64", "size": 4,
             "browser_download_url": srv.url("/dl/agent-linux-amd64"),
             "digest": None if sums else f"sha256:{SHA}"}
    assets = [asset]
    if sums:
        assets.append({"name": "SHA256SUMS", "size": 100,
                       "browser_download_url": srv.url("/dl/SHA256SUMS")})
    return json.dumps({"tag_name": "v0.1.2", "assets": assets, "body": "n" * 2000}).encode()


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
@pytest.mark.parametrize("slow", ["API answer", "SHA256SUMS"])
def test_github_metadata_has_deadlines(slow: str, headers_too: bool) -> None:
    def slowly(body: bytes) -> Route:
        return slow_headers() if headers_too else trickle(body)

    with ReleaseServer() as srv:
        api = release_json(srv, sums=slow == "SHA256SUMS")
        path = f"/repos/{REPO}/releases/latest"
        sums = f"{hashlib.sha256(b'x').hexdigest()}  agent-linux-amd64\n".encode() * 40
        srv.publish(path, slowly(api) if slow == "API answer" else Route(body=api))
        srv.publish("/dl/SHA256SUMS", slowly(sums))
        with make_client(allow_http=True) as client:
            source = GitHubSource(REPO, client=client, platform="linux-amd64",
                                  api_url=srv.url(""), deadline_s=1.0)
            started = time.monotonic()
            with pytest.raises(TransportError, match="exceeded its deadline of 1s") as info:
                source.fetch(None)
    assert time.monotonic() - started < 3.0
    expected = "GitHub API request to" if slow == "API answer" else "download of SHA256SUMS"
    assert expected in str(info.value)


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_trickled_manifest_through_the_launcher(launcher: Callable[..., Launcher],
                                                tmp_path: Path, headers_too: bool) -> None:
    """The agent runs on; the check fails on time, with ``transport:``, again and again."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", slow_headers() if headers_too else trickle(manifest(srv)))
        lch = launcher()
        args = quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                          **{"--metadata-deadline": "0.5"})
        lch.start(*args, agent_args=())
        pid = agent_pid(lch, "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "exceeded its deadline of 0.5s")
        assert st["last_error"].startswith("transport: manifest request to")
        lch.wait_state(lambda s: s.get("consecutive_failures", 0) >= 2, what="a second failure")
        assert lch.stop() == 0
