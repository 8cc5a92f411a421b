"""Manifest sources against a real loopback server (and MockTransport for https hops)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import certifi
import httpx
import pytest
from release_server import ReleaseServer, Route

from launcher.errors import ConfigError, InsecureError, ManifestError, TransportError
from launcher.sources.http import HttpSource, Validators, make_client, parse_retry_after
from launcher.sources.local import LocalSource

BODY = b'{"version": "0.1.2", "binaries": {}}'
NOW = datetime(2026, 2, 10, 21, 0, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[ReleaseServer]:
    with ReleaseServer() as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(timeout_s=5, allow_http=True) as http_client:
        yield http_client


def source(server: ReleaseServer, client: httpx.Client, path: str = "/version.json") -> HttpSource:
    return HttpSource(server.url(path), client=client, now=lambda: NOW)


def test_full_fetch_then_not_modified_by_etag(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/version.json", Route(body=BODY, etag='"v1"', last_modified="Tue, 10 Feb"))
    first = source(server, client).fetch(None)
    assert first.not_modified is False and first.body == BODY
    assert first.validators == Validators(etag='"v1"', last_modified="Tue, 10 Feb")

    second = source(server, client).fetch(first.validators)
    assert second.not_modified is True and second.body is None
    assert second.validators == first.validators
    sent = server.requests[-1].headers
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == "Tue, 10 Feb"


def test_not_modified_by_last_modified(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/version.json", Route(body=BODY, last_modified="Tue, 10 Feb 2026 21:00:00 GMT"))
    first = source(server, client).fetch(Validators())
    assert first.body == BODY
    assert "If-None-Match" not in server.requests[-1].headers
    assert source(server, client).fetch(first.validators).not_modified


def test_changed_etag_fetches_in_full(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/version.json", Route(body=BODY, etag='"v2"'))
    result = source(server, client).fetch(Validators(etag='"v1"'))
    assert result.body == BODY and result.validators.etag == '"v2"'


def test_server_error(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/version.json", Route(status=500, body=b"boom"))
    with pytest.raises(TransportError) as caught:
        source(server, client).fetch(None)
    assert str(caught.value) == (
        f"manifest request to {server.url('/version.json')} failed: HTTP 500 Internal Server Error"
    )
    assert caught.value.retry_after_s is None
    assert caught.value.kind == "transport"


def test_not_found(server: ReleaseServer, client: httpx.Client) -> None:
    with pytest.raises(TransportError, match="HTTP 404 Not Found"):
        source(server, client, "/missing.json").fetch(None)


def test_retry_after_seconds(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/version.json", Route(status=429, headers={"Retry-After": "120"}))
    with pytest.raises(TransportError) as caught:
        source(server, client).fetch(None)
    assert caught.value.retry_after_s == 120
    assert "HTTP 429 Too Many Requests (retry after 120s)" in str(caught.value)


def test_retry_after_http_date(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish(
        "/version.json",
        Route(status=503, headers={"Retry-After": "Tue, 10 Feb 2026 21:05:00 GMT"}),
    )
    with pytest.raises(TransportError) as caught:
        source(server, client).fetch(None)
    assert caught.value.retry_after_s == 300


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (" 7 ", 7.0),
        ("Tue, 10 Feb 2026 20:00:00 GMT", 0.0),
        ("Tue, 10 Feb 2026 21:00:30 GMT", 30.0),
        ("soon", None),
        ("-3", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_connection_refused(client: httpx.Client) -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}/version.json"
        with pytest.raises(TransportError) as caught:
            HttpSource(url, client=client).fetch(None)
    assert str(caught.value) == f"cannot connect to {url}: connection refused"
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_stalled_server_times_out(server: ReleaseServer) -> None:
    server.publish("/version.json", Route(body=BODY, behaviour="stall"))
    with (
        make_client(timeout_s=0.2, allow_http=True) as quick,
        pytest.raises(TransportError, match="timed out"),
    ):
        source(server, quick).fetch(None)


@pytest.mark.parametrize("behaviour", ["normal", "close", "endless"])
def test_manifest_size_is_capped(
    server: ReleaseServer, client: httpx.Client, behaviour: str
) -> None:
    body = b" " * (64 * 1024 + 1) if behaviour != "endless" else b""
    server.publish("/version.json", Route(body=body, behaviour=behaviour))  # type: ignore[arg-type]
    with pytest.raises(ManifestError) as caught:
        source(server, client).fetch(None)
    assert str(caught.value) == "manifest larger than 65536 bytes"


def test_manifest_exactly_at_the_cap_is_accepted(
    server: ReleaseServer, client: httpx.Client
) -> None:
    server.publish("/version.json", Route(body=b" " * 1024, behaviour="close"))
    result = HttpSource(server.url("/version.json"), client=client, max_manifest_bytes=1024).fetch(
        None
    )
    assert result.body == b" " * 1024


def test_plain_http_refused_before_any_request(server: ReleaseServer) -> None:
    server.publish("/version.json", Route(body=BODY))
    with make_client() as strict, pytest.raises(InsecureError) as caught:
        source(server, strict).fetch(None)
    url = server.url("/version.json")
    assert str(caught.value) == f"refusing plain http URL {url}: use https or --allow-http"
    assert caught.value.kind == "https"
    assert server.requests == []


def test_redirects_followed_and_loops_stopped(server: ReleaseServer, client: httpx.Client) -> None:
    server.publish("/old.json", Route.redirect(server.url("/version.json")))
    server.publish("/version.json", Route(body=BODY))
    assert source(server, client, "/old.json").fetch(None).body == BODY

    server.publish("/a", Route.redirect("/b"))
    server.publish("/b", Route.redirect("/a"))
    with pytest.raises(TransportError, match=r"too many redirects from .*/a \(at most 5\)"):
        source(server, client, "/a").fetch(None)
    assert len([seen for seen in server.requests if seen.path in ("/a", "/b")]) == 6


def mock_client(routes: dict[str, httpx.Response], seen: list[str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return routes.get(str(request.url), httpx.Response(404))

    return make_client(transport=httpx.MockTransport(handler))


def test_https_to_http_redirect_is_refused() -> None:
    seen: list[str] = []
    routes = {
        "https://updates.example/version.json": httpx.Response(
            302, headers={"Location": "http://updates.example/version.json"}
        ),
        "http://updates.example/version.json": httpx.Response(200, content=BODY),
    }
    with mock_client(routes, seen) as client, pytest.raises(InsecureError) as caught:
        HttpSource("https://updates.example/version.json", client=client).fetch(None)
    assert "to plain http URL http://updates.example/version.json" in str(caught.value)
    assert seen == ["https://updates.example/version.json"]


def test_every_hop_is_checked_even_without_the_response_hook() -> None:
    """A relative Location resolved against an https URL stays https and is followed."""
    seen: list[str] = []
    routes = {
        "https://a.example/v.json": httpx.Response(
            301, headers={"Location": "https://b.example/v"}
        ),
        "https://b.example/v": httpx.Response(302, headers={"Location": "/final"}),
        "https://b.example/final": httpx.Response(200, content=BODY, headers={"ETag": '"x"'}),
    }
    with mock_client(routes, seen) as client:
        result = HttpSource("https://a.example/v.json", client=client).fetch(None)
    assert result.body == BODY and result.validators.etag == '"x"'
    assert seen == ["https://a.example/v.json", "https://b.example/v", "https://b.example/final"]


def test_client_identity_and_environment() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=BODY)

    with make_client(transport=httpx.MockTransport(handler)) as client:
        assert client.trust_env is False
        assert client.max_redirects == 5
        HttpSource("https://u.example/version.json", client=client).fetch(None)
    assert seen[0].headers["user-agent"].startswith("nginx-manager-launcher/")
    assert seen[0].headers["accept-encoding"] == "identity"


def test_ca_file(tmp_path: Path) -> None:
    make_client(ca_file=certifi.where()).close()
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load CA file"):
        make_client(ca_file=str(broken))
    with pytest.raises(ConfigError, match="cannot load CA file"):
        make_client(ca_file=str(tmp_path / "missing.pem"))


def test_local_source_reads_and_reports_not_modified(tmp_path: Path) -> None:
    manifest = tmp_path / "version.json"
    manifest.write_bytes(BODY)
    local = LocalSource.from_url(manifest.as_uri())
    first = local.fetch(None)
    assert first.body == BODY and first.validators.etag is not None
    assert local.fetch(first.validators).not_modified

    manifest.write_bytes(BODY + b" ")
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = local.fetch(first.validators)
    assert changed.body == BODY + b" "


def test_local_source_errors(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=r"cannot read manifest .*: No such file"):
        LocalSource(tmp_path / "missing.json").fetch(None)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 11)
    with pytest.raises(ManifestError, match="manifest larger than 10 bytes"):
        LocalSource(big, max_manifest_bytes=10).fetch(None)
    with pytest.raises(ConfigError):
        LocalSource.from_url("file://elsewhere/version.json")
