"""Resumed downloads, through a real loopback server that cuts its connections."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Launcher
from hostile import agent_pid, manifest_for, quick_args, sleeper, start
from range_server import RangeServer
from release_server import ReleaseServer, Route

from launcher import partial
from launcher.download import download
from launcher.errors import ChecksumError, DownloadError
from launcher.install import clean_temp_files

DATA = os.urandom(1 << 20)
SHA = hashlib.sha256(DATA).hexdigest()
CUT = 300_000


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with RangeServer(DATA) as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def fetch(client: httpx.Client, server: RangeServer, dest: Path, **over: object) -> Path:
    options: dict[str, object] = {"expected_sha256": SHA, "expected_size": len(DATA)}
    options.update(over)
    return download(client, server.url(), dest, **options)  # type: ignore[arg-type]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_cut_transfer_resumes_within_the_call(server: RangeServer, client: httpx.Client,
                                                 tmp_path: Path) -> None:
    server.cuts = [CUT, 700_000]
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA
    assert [(r.status, r.range, r.if_range) for r in server.requests] == [
        (200, None, None), (206, f"bytes={CUT}-", '"v1"'), (206, "bytes=700000-", '"v1"')]
    assert sum(r.sent for r in server.requests) == len(DATA)  # not a byte twice
    assert names(tmp_path) == [path.name]  # the record went with the finished download


def test_what_a_failed_call_leaves_is_resumed_by_the_next(server: RangeServer,
                                                          client: httpx.Client,
                                                          tmp_path: Path) -> None:
    server.cuts = [CUT]
    with pytest.raises(DownloadError, match="truncated download: got 300000 of"):
        fetch(client, server, tmp_path, attempts=1)
    kept = partial.name_for(SHA)
    assert names(tmp_path) == [kept, kept + ".json"]
    assert (tmp_path / kept).stat().st_size == CUT
    record = json.loads((tmp_path / (kept + ".json")).read_text())
    assert record["etag"] == '"v1"' and record["url"] == server.url()
    assert clean_temp_files(tmp_path) == []  # the resident's sweep leaves it for the next check
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA
    assert server.requests[-1].range == f"bytes={CUT}-" and server.requests[-1].status == 206
    assert sum(r.sent for r in server.requests) == len(DATA)
    assert names(tmp_path) == [path.name]


def test_a_server_that_ignores_range_restarts_cleanly(server: RangeServer,
                                                      client: httpx.Client,
                                                      tmp_path: Path) -> None:
    server.cuts = [CUT]
    server.ignore_range = True
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA
    assert [r.status for r in server.requests] == [200, 200]
    assert server.requests[1].range == f"bytes={CUT}-"


def test_a_206_at_the_wrong_offset_restarts(server: RangeServer, client: httpx.Client,
                                            tmp_path: Path) -> None:
    server.cuts = [CUT]
    server.bad_range = True
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA
    assert [(r.status, r.range) for r in server.requests] == [
        (200, None), (206, f"bytes={CUT}-"), (200, None)]


def test_a_new_file_behind_the_url_is_fetched_whole(client: httpx.Client,
                                                    tmp_path: Path) -> None:
    old = os.urandom(len(DATA))
    with RangeServer(old) as first:
        first.cuts = [CUT]
        with pytest.raises(DownloadError):
            download(client, first.url(), tmp_path, expected_sha256=SHA,
                     expected_size=len(DATA), attempts=1)
    with RangeServer(DATA, etag='"v2"') as second:
        # Same URL path, port aside: the record names the URL, so point it at this one.
        record = tmp_path / (partial.name_for(SHA) + ".json")
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "url": second.url()}))
        path = download(client, second.url(), tmp_path, expected_sha256=SHA,
                        expected_size=len(DATA))
        assert path.read_bytes() == DATA
        assert [(r.status, r.if_range) for r in second.requests] == [(200, '"v1"')]


def test_a_resumed_file_with_a_wrong_hash_is_downloaded_again(client: httpx.Client,
                                                              tmp_path: Path) -> None:
    """A server that changes the file but not its ETag: the parts do not hash right, the
    final sha256 decides, and the file is fetched once more from byte 0."""
    with RangeServer(os.urandom(len(DATA))) as liar:
        liar.cuts = [CUT]
        with pytest.raises(DownloadError):
            download(client, liar.url(), tmp_path, expected_sha256=SHA,
                     expected_size=len(DATA), attempts=1)
        liar.content = DATA
        path = download(client, liar.url(), tmp_path, expected_sha256=SHA,
                        expected_size=len(DATA))
        assert path.read_bytes() == DATA
        assert [(r.status, r.range) for r in liar.requests[1:]] == [
            (206, f"bytes={CUT}-"), (200, None)]


def test_a_wrong_hash_discards_the_partial(server: RangeServer, client: httpx.Client,
                                           tmp_path: Path) -> None:
    server.cuts = [CUT]
    with pytest.raises(ChecksumError):
        fetch(client, server, tmp_path, expected_sha256="0" * 64)
    assert names(tmp_path) == []


def test_another_release_removes_the_partial(server: RangeServer, client: httpx.Client,
                                             tmp_path: Path) -> None:
    server.cuts = [CUT]
    with pytest.raises(DownloadError):
        fetch(client, server, tmp_path, attempts=1)
    assert names(tmp_path)
    other = os.urandom(1000)
    with RangeServer(other) as release:
        path = download(client, release.url(), tmp_path,
                        expected_sha256=hashlib.sha256(other).hexdigest(),
                        expected_size=len(other))
    assert names(tmp_path) == [path.name]


def test_a_stale_partial_is_not_resumed(server: RangeServer, client: httpx.Client,
                                        tmp_path: Path) -> None:
    server.cuts = [CUT]
    with pytest.raises(DownloadError):
        fetch(client, server, tmp_path, attempts=1)
    record = tmp_path / (partial.name_for(SHA) + ".json")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "saved": data["saved"] - partial.MAX_AGE_S - 1}))
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA
    assert server.requests[-1].range is None and server.requests[-1].status == 200


def test_resume_follows_a_redirect_as_from_github(server: RangeServer, client: httpx.Client,
                                                  tmp_path: Path) -> None:
    """GitHub's download URL answers 302 to its objects host: each resumed request goes
    through the redirect again, and the Range reaches the host that has the bytes."""
    server.cuts = [CUT]
    with ReleaseServer() as web:
        web.publish("/releases/download/v0.2.0/agent-linux-amd64", Route.redirect(server.url()))
        url = web.url("/releases/download/v0.2.0/agent-linux-amd64")
        with httpx.Client(timeout=5, follow_redirects=True) as follows:
            path = download(follows, url, tmp_path, expected_sha256=SHA,
                            expected_size=len(DATA))
        assert len(web.requests) == 2
    assert path.read_bytes() == DATA
    assert [(r.status, r.range) for r in server.requests] == [(200, None),
                                                              (206, f"bytes={CUT}-")]


def test_a_launcher_gets_a_build_bigger_than_one_checks_deadline_over_several(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A slow link and a short --download-deadline: each check ends at its deadline with a
    part of the build, the next check continues it, and the build arrives whole."""
    new = sleeper(tmp_path, "0.2.0", pad=1 << 20).read_bytes()
    with ReleaseServer() as meta, RangeServer(new) as slow:
        slow.rate_bps = 256 << 10  # about 4 s for the build, 1.2 s allowed per check
        meta.publish("/version.json", Route(body=manifest_for("0.2.0", slow.url(), new)))
        lch = launcher()
        start(lch, quick_args(meta.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                              **{"--download-deadline": "1.2"}), "0.1.0")
        agent_pid(lch, "0.2.0", timeout=60)
        assert lch.stop() == 0
    ranges = [r.range for r in slow.requests]
    assert ranges[0] is None and len(ranges) >= 3
    assert all(r is not None for r in ranges[1:]), ranges
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:] if r]
    assert offsets == sorted(set(offsets))  # each check continued where the last one stopped
    # Sent, not received: what sat in the socket buffers at each deadline is sent twice.
    assert sum(r.sent for r in slow.requests) < len(new) + len(ranges) * (256 << 10)
    assert "exceeded its deadline" in lch.log()
    assert not [p for p in (lch.state_dir / "bin").iterdir() if p.name.startswith(".agent.")]


def test_a_complete_partial_is_used_without_a_request(server: RangeServer,
                                                      client: httpx.Client,
                                                      tmp_path: Path) -> None:
    """A worker killed after the last byte but before the swap left the whole build."""
    server.cuts = [CUT]
    with pytest.raises(DownloadError):
        fetch(client, server, tmp_path, attempts=1)
    kept = tmp_path / partial.name_for(SHA)
    kept.write_bytes(DATA)
    path = fetch(client, server, tmp_path)
    assert path.read_bytes() == DATA and len(server.requests) == 1



def test_headers_asked_for_a_resumption_are_held_to_the_deadline(server: RangeServer,
                                                                 client: httpx.Client,
                                                                 tmp_path: Path) -> None:
    """A header callable (a registry's token, asked again before each request) that hangs
    on the resumption, like a token server that does not answer: the download still ends at
    its deadline, with what it received kept for the next call."""
    server.cuts = [CUT]
    asked: list[str] = []

    def headers() -> dict[str, str]:
        asked.append("asked")
        if len(asked) > 1:
            time.sleep(30)
            asked.append("answered")
        return {}

    with pytest.raises(DownloadError, match="exceeded its deadline"):
        fetch(client, server, tmp_path, headers=headers, deadline_s=2)
    assert asked == ["asked", "asked"], "the hanging call was not cut at the deadline"
    assert (tmp_path / partial.name_for(SHA)).stat().st_size == CUT
