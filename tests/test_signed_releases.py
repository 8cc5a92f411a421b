"""Signed releases: with --public-key the manifest's bytes must carry a valid signature.

The worker cases run ``worker.run_check`` against a MockTransport (requests recorded); the
scenarios run a real launcher against the real update server, publishing with the release
tool's ``--sign-key``, and show that a refused manifest never touches the agent nor marks a
build bad, and that the genuine release installs once it is served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import minisign_tool
import pytest
import release_tool
from conftest import ROOT, Launcher, UpdateServer, fast_args
from signing import Key, make_key, sign

from launcher import worker
from launcher.settings import Settings
from launcher.signature import MAX_SIGNATURE_BYTES
from launcher.sources.http import make_client

SHA = "a" * 64
URL = "https://updates.example/version.json"


def manifest_bytes(version: str = "0.1.2", **extra: Any) -> bytes:
    entry = {"url": f"https://updates.example/bin/{version}/agent", "sha256": SHA}
    return json.dumps({"version": version, "binaries": {"linux-amd64": entry}, **extra}).encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Key, Key]:
    d = tmp_path_factory.mktemp("keys")
    return make_key(d, "release"), make_key(d, "foreign")


# ---- the worker ---------------------------------------------------------------------------


class Origin:
    """An in-memory https origin: path -> response factory; every request recorded."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        route = self.routes.get(request.url.path)
        return route(request) if route else httpx.Response(404)


def answer(body: bytes, status: int = 200, **headers: str) -> Callable[[httpx.Request],
                                                                         httpx.Response]:
    return lambda _request: httpx.Response(status, content=body, headers=headers)


def check(origin: Origin, tmp_path: Path, keys: tuple[Path, ...], url: str = URL,
          etag: str | None = None, trust: dict[str, Any] | None = None) -> worker.Result:
    s = Settings(manifest_url=url, platform="linux-amd64", state_dir=tmp_path / "state",
                 public_keys=keys, allow_unsigned=not keys).for_worker()
    request = {"settings": s, "current": None, "bad": [], "host_id": "h", "stage": False,
               "etag": etag, "trust": trust}
    with make_client(transport=httpx.MockTransport(origin)) as client:
        return worker.run_check(request, client=client)


def test_worker_verifies_the_signature_beside_the_manifest(keys: tuple[Key, Key],
                                                           tmp_path: Path) -> None:
    """The .minisig is fetched from the manifest's path (query kept) and verified."""
    body = manifest_bytes()
    origin = Origin({"/version.json": answer(body, etag='"v1"'),
                     "/version.json.minisig": answer(sign(body, keys[0]))})
    result = check(origin, tmp_path, (keys[1].public, keys[0].public), url=URL + "?ch=stable")
    assert result.outcome == "install", result
    assert result.etag == '"v1"'
    assert origin.seen == [URL + "?ch=stable", URL + ".minisig?ch=stable"]


def test_not_modified_needs_no_signature(keys: tuple[Key, Key], tmp_path: Path) -> None:
    from launcher.signature import load_public_key

    origin = Origin({"/version.json": answer(b"", 304, etag='"v1"')})
    # Accepted earlier under the key configured now (a 304 for another key is not trusted).
    accepted = {"accepted": {"version": "0.1.2", "serial": 1, "expires": None,
                             "key": load_public_key(keys[0].public).id_hex}}
    result = check(origin, tmp_path, (keys[0].public,), etag='"v1"', trust=accepted)
    assert result.outcome == "not_modified"
    assert origin.seen == [URL]


def test_without_keys_no_signature_is_fetched(tmp_path: Path) -> None:
    origin = Origin({"/version.json": answer(manifest_bytes())})
    assert check(origin, tmp_path, ()).outcome == "install"
    assert origin.seen == [URL]


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("missing", "signature",
     f"signature: missing signature: GET {URL}.minisig answered 404"),
    ("foreign", "signature", "signature: no trusted key has id"),
    ("tampered", "signature", "signature: manifest signature does not verify with key"),
    ("garbage", "signature", "signature: malformed signature"),
    ("oversized", "signature", f"larger than {MAX_SIGNATURE_BYTES} bytes"),
    ("unavailable", "transport", "signature request to"),
    ("redirect to http", "https", "refusing redirect"),
    ("expired", "expired", "expired: manifest 0.1.2 expired at 2020-01-01T00:00:00Z"),
])
def test_worker_refusals(name: str, kind: str, message: str, keys: tuple[Key, Key],
                         tmp_path: Path) -> None:
    """Each refusal is a check error of its own kind, before the manifest is even parsed."""
    body = b"{not even json" if name in ("missing", "foreign", "garbage") else manifest_bytes()
    if name == "expired":
        body = manifest_bytes(expires="2020-01-01T00:00:00Z")
    sig = {
        "foreign": answer(sign(body, keys[1])),
        "tampered": answer(sign(body + b" ", keys[0])),
        "garbage": answer(b"\x00garbage"),
        "oversized": answer(b"x" * (MAX_SIGNATURE_BYTES + 1)),
        "unavailable": answer(b"", 503, **{"Retry-After": "7"}),
        "redirect to http": answer(b"", 302, location="http://updates.example/x.minisig"),
        "expired": answer(sign(body, keys[0])),
    }.get(name)
    routes = {"/version.json": answer(body)}
    if sig is not None:
        routes["/version.json.minisig"] = sig
    result = check(Origin(routes), tmp_path, (keys[0].public,))
    assert result.outcome == "error"
    assert result.error_kind == kind
    assert result.error is not None and message in result.error
    assert result.error.startswith(f"{kind}:")
    if name == "unavailable":
        assert result.retry_after_s == 7


def test_local_source_reads_the_signature_beside_the_file(keys: tuple[Key, Key],
                                                          tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    body = manifest_bytes()
    (release / "version.json").write_bytes(body)
    url = (release / "version.json").as_uri()
    result = check(Origin({}), tmp_path, (keys[0].public,), url=url)
    assert result.error == (f"signature: missing signature: {release}/version.json.minisig "
                            "does not exist")
    (release / "version.json.minisig").write_bytes(sign(body, keys[0]))
    assert check(Origin({}), tmp_path, (keys[0].public,), url=url).outcome == "install"


# ---- release tooling ----------------------------------------------------------------------


def test_release_tool_signs_the_manifest_and_a_bad_key_publishes_nothing(
        keys: tuple[Key, Key], tmp_path: Path) -> None:
    script = tmp_path / "agent"
    script.write_text("#!/bin/sh\necho 0.1.2\n")
    cmd = ["bash", str(ROOT / "scripts" / "release-local.sh"), "0.1.2", "--binary", str(script),
           "--release-dir", str(tmp_path / "rel"), "--sign-key", str(keys[0].secret)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done
    body = (tmp_path / "rel" / "version.json").read_bytes()
    sig = (tmp_path / "rel" / "version.json.minisig").read_bytes()
    from launcher.signature import load_public_key, verify

    _, comment = verify(body, sig, [load_public_key(keys[0].public)])
    assert comment.endswith("\tfile:version.json\thashed")
    bad = subprocess.run([*cmd[:-1], str(keys[0].public), "--release-dir", str(tmp_path / "x")],
                         capture_output=True, text=True, check=False,
                         env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "--sign-key" in bad.stderr
    assert not (tmp_path / "x").exists()
    release_tool.publish("0.1.3", tmp_path / "rel", "http://x", binary=script)
    assert not (tmp_path / "rel" / "version.json.minisig").exists(), "stale signature kept"


# ---- a real launcher ----------------------------------------------------------------------


@pytest.fixture
def signed(server: UpdateServer, keys: tuple[Key, Key]) -> Iterator[Callable[..., None]]:
    """Publish a release into the server, signed with the given key (or unsigned)."""

    def publish(version: str, binary: Path, key: Key | None) -> None:
        release_tool.publish(version, server.dir, server.base_url, binary=binary,
                             sign_key=key.secret if key else None)

    yield publish


def start(launcher: Callable[..., Launcher], server: UpdateServer, seed: Path,
          *public_keys: Path, url: str | None = None) -> Launcher:
    lch = launcher()
    args = fast_args(server, lch, *public_keys, **({"--manifest-url": url} if url else {}))
    lch.start(*args, "--seed-binary", str(seed))
    return lch


def assert_refused(lch: Launcher, version: str, error_start: str) -> dict[str, Any]:
    """The agent runs on untouched, the error is in status, no build is marked bad."""
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith(error_start)
                        and s.get("consecutive_failures", 0) >= 2,
                        what=f"two failed checks with {error_start}")
    assert st["current"]["version"] == version and st["phase"] == "committed"
    assert st["bad"] == []
    assert (lch.health() or {}).get("version") == version
    assert sorted(p.name for p in (lch.state_dir / "bin").iterdir()) == ["agent"]
    return st


def wait_installed(lch: Launcher, version: str) -> None:
    lch.wait_healthy(version)
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == version, what=f"{version} committed")
    assert st["last_error"] is None and st["bad"] == []


def test_signed_release_installs_with_a_rotated_key(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        signed: Callable[..., None], keys: tuple[Key, Key], tmp_path: Path) -> None:
    """Old and new keys trusted, the release signed with the new one: it installs."""
    old = make_key(tmp_path / "k", "old")
    signed("0.1.1", build("0.1.1"), keys[0])
    lch = start(launcher, server, build("0.1.0"), old.public, keys[0].public)
    wait_installed(lch, "0.1.1")
    assert f"manifest signature verified with key {keys[0].id_hex}" in lch.log()
    assert lch.stop() == 0


@pytest.mark.parametrize("how", ["unsigned", "foreign key", "tampered manifest"])
def test_refused_manifest_leaves_the_agent_then_the_genuine_release_installs(
        how: str, server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], signed: Callable[..., None],
        keys: tuple[Key, Key]) -> None:
    """Missing, foreign or non-matching signature: ``signature:`` in status, nothing bad."""
    release, foreign = keys
    signed("0.1.1", build("0.1.1"), {"unsigned": None, "foreign key": foreign,
                                     "tampered manifest": release}[how])
    if how == "tampered manifest":
        manifest = server.dir / "version.json"
        manifest.write_bytes(manifest.read_bytes().replace(b'"0.1.1"', b'"0.1.1" '))
    lch = start(launcher, server, build("0.1.0"), release.public)
    st = assert_refused(lch, "0.1.0", "signature:")
    expected = {"unsigned": "missing signature: GET", "foreign key": "no trusted key has id",
                "tampered manifest": "manifest signature does not verify"}[how]
    assert expected in st["last_error"]
    signed("0.1.1", build("0.1.1"), release)
    wait_installed(lch, "0.1.1")
    assert lch.stop() == 0


def test_expired_signed_manifest_is_refused(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        signed: Callable[..., None], keys: tuple[Key, Key]) -> None:
    """``expires`` inside the signed bytes has passed: ``expired:``, then a fresh one installs."""
    signed("0.1.1", build("0.1.1"), keys[0])
    manifest = server.dir / "version.json"
    document = json.loads(manifest.read_bytes())

    def republish(expires: str) -> None:
        manifest.write_text(json.dumps({**document, "expires": expires}))
        minisign_tool.sign_file(manifest, keys[0].secret)

    republish("2020-01-01T00:00:00Z")
    lch = start(launcher, server, build("0.1.0"), keys[0].public)
    assert_refused(lch, "0.1.0", "expired: manifest 0.1.1 expired at 2020-01-01T00:00:00Z")
    republish("2999-01-01T00:00:00Z")
    wait_installed(lch, "0.1.1")
    assert lch.stop() == 0


def test_signed_local_directory_source(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        signed: Callable[..., None], keys: tuple[Key, Key]) -> None:
    """A ``file://`` manifest is verified against ``version.json.minisig`` beside it."""
    signed("0.1.1", build("0.1.1"), keys[0])
    lch = start(launcher, server, build("0.1.0"), keys[0].public,
                url=(server.dir / "version.json").as_uri())
    wait_installed(lch, "0.1.1")
    assert lch.stop() == 0


def test_check_command_reports_signature_errors(
        server: UpdateServer, build: Callable[[str], Path], signed: Callable[..., None],
        keys: tuple[Key, Key], tmp_path: Path) -> None:
    def run_check(key: Key) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "launcher", "check", "--manifest-url", server.manifest_url,
             "--allow-http", "--public-key", str(key.public), "--state-dir",
             str(tmp_path / "none")],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)

    signed("0.1.1", build("0.1.1"), keys[0])
    ok = run_check(keys[0])
    assert ok.returncode == 0 and "would install 0.1.1" in ok.stdout, ok
    refused = run_check(keys[1])
    assert refused.returncode == 1
    assert refused.stdout.startswith("check failed: signature: no trusted key has id")


def test_legacy_signatures_are_refused_unless_enabled(keys: tuple[Key, Key],
                                                      tmp_path: Path) -> None:
    """A legacy Ed signature is refused by default and accepted with the setting on."""
    body = manifest_bytes()
    origin = Origin({"/version.json": answer(body),
                     "/version.json.minisig": answer(sign(body, keys[0], legacy=True))})
    refused = check(origin, tmp_path, (keys[0].public,))
    assert refused.outcome == "error" and "legacy Ed signatures are refused" in str(refused.error)
    s = Settings(manifest_url=URL, platform="linux-amd64", state_dir=tmp_path / "state",
                 public_keys=(keys[0].public,), allow_legacy_signatures=True).for_worker()
    request = {"settings": s, "current": None, "bad": [], "host_id": "h", "stage": False}
    with make_client(transport=httpx.MockTransport(origin)) as client:
        assert worker.run_check(request, client=client).outcome == "install"
