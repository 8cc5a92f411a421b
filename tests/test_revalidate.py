"""The no-change check without httpx (``launcher.sources.revalidate``), against real loopback
servers over real TLS: a 304 ends the check as before, anything else is the full check, with
the same results and the same errors; the trust rules of a 304 are unchanged."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hostile import manifest_for
from release_server import ReleaseServer, Route, tls_context
from signing import Key, make_key, sign

from launcher import worker
from launcher.settings import Settings
from launcher.sources import revalidate
from launcher.sources.base import Validators
from launcher.sources.http import _user_agent

ETAG = '"v1"'


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture
def tls(ca: Any) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


def publish(srv: ReleaseServer, key: Key, etag: str | None = ETAG) -> None:
    """A signed manifest of 0.1.0, the version the host runs: nothing to do."""
    expires = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.loads(manifest_for("0.1.0", srv.url("/bin/agent"), b"x"))
    data = json.dumps({**body, "serial": 7, "expires": expires}).encode()
    srv.publish("/version.json", Route(body=data, etag=etag))
    srv.publish("/version.json.minisig", Route(body=sign(data, key)))


def request(srv: ReleaseServer, key: Key, tmp_path: Path, ca_file: Path | None,
            *, accepted_key: str | None = None, expires: str = "2099-01-01T00:00:00Z",
            url: str | None = None) -> dict[str, Any]:
    """A resident's request after it accepted that manifest and kept its ETag."""
    s = Settings(manifest_url=url or srv.url("/version.json"), platform="linux-amd64",
                 state_dir=tmp_path, public_keys=(key.public,), ca_file=ca_file,
                 allow_http=srv.ssl_context is None)
    signer = accepted_key or key.id_hex
    return {"settings": s.for_worker(), "current": {"version": "0.1.0", "sha256": "0" * 64},
            "bad": [], "host_id": "h", "etag": ETAG, "last_modified": None, "stage": True,
            "trust": {"serials": {signer: 7}, "accepted": {
                "version": "0.1.0", "serial": 7, "key": signer, "expires": expires}}}


def in_a_worker(req: dict[str, Any], bundle: Path | None = None) -> tuple[dict[str, Any], bool]:
    """run_check in a fresh interpreter: (result, whether httpx was imported). ``bundle``:
    a CA bundle that stands for certifi's, in both the full check and the no-change one."""
    prelude = "" if bundle is None else (
        "import certifi;from launcher.sources import revalidate;"
        f"certifi.where=lambda:{str(bundle)!r};"
        f"revalidate.certifi_bundle=lambda:{str(bundle)!r};")
    code = ("import json,sys;from dataclasses import asdict;from launcher import worker;"
            f"{prelude}r=worker.run_check(json.load(sys.stdin));"
            "print(json.dumps([asdict(r),'httpx' in sys.modules]))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys;sys.path.insert(0,"
                          f"{str(ROOT)!r});{code}"], input=json.dumps(req), text=True,
                         capture_output=True, timeout=60, check=True)
    result, httpx_loaded = json.loads(out.stdout)
    return result, httpx_loaded


def test_a_304_over_tls_with_the_ca_file_needs_no_httpx(tls: ReleaseServer, key: Key,
                                                        ca_file: Path, tmp_path: Path) -> None:
    """The common check: one conditional GET over verified TLS, answered 304; httpx is never
    imported, and the request carries what httpx would have sent."""
    publish(tls, key)
    result, httpx_loaded = in_a_worker(request(tls, key, tmp_path, ca_file))
    assert result["outcome"] == "not_modified" and result["etag"] == ETAG, result
    assert result["signatures"] == "required" and result["error"] is None
    assert not httpx_loaded
    [seen] = tls.requests
    assert seen.path == "/version.json" and seen.headers["If-None-Match"] == ETAG
    assert seen.headers["User-Agent"] == _user_agent()
    assert seen.headers["Accept-Encoding"] == "identity"
    assert seen.headers["Host"] == f"127.0.0.1:{tls.port}"


def test_a_200_with_nothing_to_do_is_the_full_check(tls: ReleaseServer, key: Key,
                                                    ca_file: Path, tmp_path: Path) -> None:
    """A server that ignores the validators: the full check runs (signature verified, the
    manifest parsed and decided), with the same result as before."""
    publish(tls, key, etag=None)
    result, httpx_loaded = in_a_worker(request(tls, key, tmp_path, ca_file))
    assert result["outcome"] == "none" and result["version"] == "0.1.0", result
    assert result["accepted"]["key"] == key.id_hex and httpx_loaded
    assert [r.path for r in tls.requests] == ["/version.json", "/version.json",
                                              "/version.json.minisig"]


def test_redirects_are_followed_to_https_only(tls: ReleaseServer, key: Key, ca_file: Path,
                                              tmp_path: Path) -> None:
    """A 304 behind an https redirect counts; a redirect to plain http is never followed
    here, and the full check refuses it with today's error."""
    publish(tls, key)
    tls.publish("/moved.json", Route.redirect(tls.url("/version.json")))
    result = worker.run_check(request(tls, key, tmp_path, ca_file, url=tls.url("/moved.json")))
    assert result.outcome == "not_modified"
    assert [r.path for r in tls.requests] == ["/moved.json", "/version.json"]
    with ReleaseServer() as plain:
        publish(plain, key)
        tls.publish("/moved.json", Route.redirect(plain.url("/version.json")))
        result = worker.run_check(request(tls, key, tmp_path, ca_file,
                                          url=tls.url("/moved.json")))
        assert result.outcome == "error" and result.error_kind == "https", result
        assert plain.url("/version.json") in str(result.error) and plain.requests == []


def test_errors_are_the_full_checks(tls: ReleaseServer, key: Key, ca_file: Path,
                                    tmp_path: Path) -> None:
    """An untrusted certificate, an error status, a refused connection: the same clear
    errors as before, and no request is sent over an unverified connection."""
    publish(tls, key)
    result = worker.run_check(request(tls, key, tmp_path, None))
    assert result.outcome == "error" and result.error_kind == "transport"
    assert "TLS certificate verification failed" in str(result.error)
    assert tls.requests == []
    tls.publish("/version.json", Route(status=500, body=b"down"))
    result = worker.run_check(request(tls, key, tmp_path, ca_file))
    assert result.error == (f"transport: manifest request to {tls.url('/version.json')} "
                            "failed: HTTP 500 Internal Server Error")
    url = tls.url("/version.json")
    tls.__exit__(None, None, None)
    result = worker.run_check(request(tls, key, tmp_path, ca_file, url=url))
    assert result.error == f"transport: cannot connect to {url}: connection refused"


def test_the_rules_of_a_304_still_hold(tls: ReleaseServer, key: Key, ca_file: Path,
                                       tmp_path: Path) -> None:
    """Behind a 304 the accepted manifest's expiry is re-checked; validators of a manifest
    accepted under a key no longer configured are not sent at all (issue 10)."""
    publish(tls, key)
    expired = request(tls, key, tmp_path, ca_file, expires="2020-01-01T00:00:00Z")
    result = worker.run_check(expired)
    assert result.outcome == "error" and result.error_kind == "expired", result
    assert tls.requests[-1].headers.get("If-None-Match") == ETAG
    dropped = request(tls, key, tmp_path, ca_file, accepted_key="AAAAAAAAAAAAAAAA")
    result = worker.run_check(dropped)
    assert result.outcome == "none", result
    assert all("If-None-Match" not in r.headers for r in tls.requests[1:])


def test_nothing_that_would_need_encoding_is_sent_by_hand() -> None:
    """Header injection through a journal's ETag, credentials or spaces in the URL, plain
    http: left to httpx (None); IPv6 hosts are bracketed, default ports left out."""
    headers = {"If-None-Match": '"a"'}
    ok = revalidate._request(revalidate.urlsplit("https://[::1]:8443/v.json?x=1"), headers,
                             allow_http=False)
    assert ok is not None and ok.startswith(b"GET /v.json?x=1 HTTP/1.1\r\nHost: [::1]:8443\r\n")
    assert b"Host: h\r\n" in (revalidate._request(revalidate.urlsplit("https://h:443/"),
                                                  headers, allow_http=False) or b"")
    for url, hdrs, allow in [("https://h/v", {"If-None-Match": '"a"\r\nX-Evil: 1'}, False),
                             ("https://user:pw@h/v", headers, False),
                             ("https://h/a b", headers, False),
                             ("https://h/\u00e9", headers, False),
                             ("http://h/v", headers, False)]:
        assert revalidate._request(revalidate.urlsplit(url), hdrs, allow_http=allow) is None
    assert not revalidate.applies({"manifest_url": "https://h/v", "proxy": "http://p:3128"})
    assert not revalidate.applies({"manifest_url": "oci://r/repo:tag"})
    assert revalidate.applies({"manifest_url": "https://h/v", "proxy": None})


def test_a_hostile_answer_is_never_a_304(tmp_path: Path) -> None:
    """A head that never ends, or a status line that is not HTTP/1.x: the full check."""
    import socket
    import threading

    answers = [b"HTTP/1.1 304 Not Modified\r\n" + b"X: y\r\n" * 20000,
               b"ICY 304 OK\r\n\r\n", b"HTTP/1.1 3044\r\n\r\n"]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        def serve() -> None:
            for answer in answers:
                conn, _ = srv.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/v.json"
        for _ in answers:
            assert not revalidate.not_modified(url, Validators(etag=ETAG), ca_file=None,
                                               allow_http=True, deadline_s=5)
        thread.join(5)


def test_the_user_agent_is_make_clients() -> None:
    assert revalidate.user_agent() == _user_agent() != "nginx-manager-launcher/unknown"


def test_a_ca_file_is_tried_alone_then_with_certifis_bundle(
        tls: ReleaseServer, key: Key, ca: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trust is certifi's bundle plus --ca-file whichever is tried first: a server whose
    CA is in the bundle (here put there) verifies with an unrelated --ca-file too."""
    import certifi
    import trustme

    bundle, other = tmp_path / "bundle.pem", tmp_path / "other.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setattr(revalidate, "certifi_bundle", lambda: str(bundle))
    revalidate.tls_context.cache_clear()
    publish(tls, key)
    try:
        assert revalidate.not_modified(tls.url("/version.json"), Validators(etag=ETAG),
                                       ca_file=str(other), allow_http=False, deadline_s=10)
    finally:
        revalidate.tls_context.cache_clear()
    assert len(tls.requests) == 1


def test_the_bundle_is_certifis() -> None:
    import certifi

    assert Path(revalidate.certifi_bundle()).resolve() == Path(certifi.where()).resolve()


def test_a_trickled_head_ends_at_the_deadline() -> None:
    """One byte of headers at a time, never ending: given up at the metadata deadline
    (the full check then has its own), not at the resident's worker limit."""
    import socket
    import threading
    import time

    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 304 Not Modified\r\n")
                while not stop.wait(0.02):
                    conn.sendall(b"X")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started = time.monotonic()
        assert not revalidate.not_modified(f"http://127.0.0.1:{srv.getsockname()[1]}/v",
                                           Validators(etag=ETAG), ca_file=None,
                                           allow_http=True, deadline_s=0.5)
        assert time.monotonic() - started < 10, "not ended by its deadline"
        stop.set()
        thread.join(5)


REFUSED_HEADS = {
    "a header line without a colon": b"this is not a header",
    "a space before the colon": b'ETag : "v1"',
    "a NUL in a value": b"X-A: a\x00b",
    "a control character in a value": b"X-A: a\x01b",
    "a DEL in a name": b"X\x7fA: b",
    "a name that is not a token": b"X(A): b",
    "an obs-fold first line": b" folded",
    "an obs-fold line after a header": b"X-A: a\r\n\tfolded",
    "two different Content-Length": b"Content-Length: 1\r\nContent-Length: 2",
    "a list of different Content-Length": b"Content-Length: 1, 2",
    "a Content-Length that is no number": b"Content-Length: -1",
    "a Transfer-Encoding httpx refuses": b"Transfer-Encoding: gzip",
}


@pytest.fixture
def answers() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server answering each request with the next of its queued heads."""
    import socket
    import threading

    queued: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(queued.pop(0))

        threading.Thread(target=serve, daemon=True).start()
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/version.json", queued


@pytest.mark.parametrize("fields", list(REFUSED_HEADS.values()), ids=list(REFUSED_HEADS))
def test_a_head_httpx_would_refuse_is_never_a_304(
        answers: tuple[str, list[bytes]], fields: bytes) -> None:
    """What h11 refuses as a protocol error (or a little more) is the full check, which
    says what is wrong; a 304 is never read into it."""
    url, queued = answers
    queued.append(b"HTTP/1.1 304 Not Modified\r\n" + fields + b"\r\n\r\n")
    assert not revalidate.not_modified(url, Validators(etag=ETAG), ca_file=None,
                                       allow_http=True, deadline_s=5)
    assert queued == []  # it was asked, and answered


def test_a_plain_304_head_is_read() -> None:
    """What real servers send: a reason or none, equal Content-Length values, a tab in a
    value, latin-1 (obs-text) bytes, empty values."""
    from launcher.sources import head

    assert head.parse(b"HTTP/1.1 304") == (304, None)
    assert head.parse(b"HTTP/1.0 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n"
                      b"content-length: 5, 5\r\nX-A: a\tb \xe9\r\nX-B:\r\n"
                      b"Transfer-Encoding: chunked") == (304, None)
    assert head.parse(b"HTTP/1.1 302 Found\r\nLocation: /x") == (302, "/x")
    for fields in REFUSED_HEADS.values():
        with pytest.raises(ValueError):
            head.parse(b"HTTP/1.1 304 Not Modified\r\n" + fields)


def test_the_deadline_covers_every_address_of_the_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with four addresses that drop SYNs (listeners whose accept queue is full):
    the connections share the one deadline; each used to get all of it (four times the
    deadline)."""
    import socket
    import time

    holes, fillers, addresses = [], [], []
    try:
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            hole = socket.socket()
            hole.bind((ip, 0))
            hole.listen(0)
            holes.append(hole)
            for _ in range(3):  # fill the accept queue: further SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(hole.getsockname())
                fillers.append(filler)
            addresses.append(hole.getsockname())
        real = socket.getaddrinfo

        def resolve(host: str, port: object, *args: Any, **kwargs: Any) -> Any:
            if host != "updates.example":
                return real(host, port, *args, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        started = time.monotonic()
        assert not revalidate.not_modified("http://updates.example/version.json",
                                           Validators(etag=ETAG), ca_file=None,
                                           allow_http=True, deadline_s=2.0)
        took = time.monotonic() - started
    finally:
        for s in holes + fillers:
            s.close()
    assert took < 5.0, f"{took:.1f}s for a 2 s deadline"
