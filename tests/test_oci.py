"""Releases from a real OCI registry: Debian's docker-registry, TLS, bearer-token auth.

One registry behind a token server (the origin: ``alice`` may push and pull, anonymous
requests may pull ``public/*`` only) and one anonymous registry used as a mirror, both for
the whole module; each test works in a repository of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import oci_release
import pytest
import release_tool
from conftest import ROOT, Launcher, free_port, https_args, run_cli, script_agent
from hostile import sleeper
from oci_registry import CuttingRelay, RegistryProcess, TokenServer, docker_config
from release_server import ReleaseServer, Route, tls_context
from signing import Key, make_key, sign

from launcher.progress import read_transfer
from launcher.sources.http import make_client
from launcher.worker import run_check

USER, PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="module")
def tokens(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with TokenServer(ca, tmp_path_factory.mktemp("tokens"), users={USER: PASSWORD},
                     public=("public/",)) as server:
        yield server


@pytest.fixture(scope="module")
def origin(ca: Any, tokens: TokenServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("origin"), ca,
                         auth=tokens.auth_config()) as registry:
        yield registry


@pytest.fixture(scope="module")
def mirror(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("mirror"), ca) as registry:
        yield registry


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="module")
def creds(origin: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return docker_config(tmp_path_factory.mktemp("creds") / "config.json", origin.host, USER,
                         PASSWORD)


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name of this test's own."""
    return "t/" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")


def push(version: str, binary: Path, key: Key, creds: Path, ca_file: Path,
         *urls: str) -> dict[str, Any]:
    return release_tool.publish_oci(version, push_urls=urls, binary=binary,
                                    sign_key=key.secret, credentials=creds, ca_file=ca_file,
                                    log=lambda _: None)


def settings(url: str, tmp_path: Path, ca_file: Path, key: Key, **over: Any) -> dict[str, Any]:
    return {"manifest_url": url, "ca_file": str(ca_file), "public_keys": [str(key.public)],
            "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
            "max_binary_bytes": 1 << 30, "download_deadline_s": 60.0, "min_speed_bps": 1.0,
            "metadata_deadline_s": 30.0, **over}


def stage(s: dict[str, Any], client: httpx.Client | None = None) -> Any:
    return run_check({"settings": s, "host_id": "test-host", "stage": True}, client=client)


def test_release_tool_pushes_and_a_launcher_installs_and_updates(
        origin: RegistryProcess, tokens: TokenServer, key: Key, creds: Path, ca_file: Path,
        repo: str, launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """release_tool.py --oci-push, then a real launcher installs 0.1.1 from oci:// and
    updates to 0.1.2 when the tag moves; every registry request was authorised by a token."""
    url = f"oci://{origin.host}/{repo}:stable"
    pushed = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "release_tool.py"), "0.1.1", "--binary",
         str(build("0.1.1")), "--sign-key", str(key.secret), "--oci-push", url,
         "--registry-credentials", str(creds), "--ca-file", str(ca_file)],
        capture_output=True, text=True, timeout=60, check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed {url} = sha256:" in pushed.stdout
    lch = launcher()
    lch.start(*https_args(lch, "--manifest-url", url, ca_file=ca_file,
                          public_keys=(key.public,)),
              "--registry-credentials", str(creds), "--seed-binary", str(build("0.1.0")))
    lch.wait_healthy("0.1.1", timeout=30)
    push("0.1.2", build("0.1.2"), key, creds, ca_file, url)
    lch.wait_healthy("0.1.2", timeout=30)
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == "0.1.2", what="0.1.2 committed")
    assert st["last_error"] is None
    lch.wait_log("manifest not modified", timeout=30)  # If-None-Match with the index digest
    assert lch.state()["etag"].startswith('"sha256:')
    pulls = [r for r in tokens.requests if r["scope"] == f"repository:{repo}:pull"]
    assert pulls and all(r["user"] == USER for r in pulls)
    assert lch.stop() == 0


def test_anonymous_pull_where_the_token_server_allows_it(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, tmp_path: Path,
        build: Callable[[str], Path]) -> None:
    """No credentials: a public repository installs; a private one is a clear refusal."""
    push("0.1.1", build("0.1.1"), key, creds, ca_file,
         f"oci://{origin.host}/public/agent:stable", f"oci://{origin.host}/private/agent:stable")
    result = stage(settings(f"oci://{origin.host}/public/agent:stable", tmp_path, ca_file, key))
    assert result.outcome == "staged", result
    assert result.version == "0.1.1"
    out = run_cli("check", "--json", "--manifest-url", f"oci://{origin.host}/private/agent:stable",
                  "--ca-file", str(ca_file), "--public-key", str(key.public), "--state-dir",
                  str(tmp_path / "s2"), "--platform", "linux-amd64")
    refused = json.loads(out.stdout)
    assert out.returncode == 1
    assert refused["error"] == (
        f"transport: registry {origin.host} refused an anonymous request for "
        f"https://{origin.host}/v2/private/agent/manifests/stable (HTTP 401): give "
        "--registry-credentials")


def test_wrong_credentials_are_a_clear_error(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, build: Callable[[str], Path]) -> None:
    """A wrong password: the token server refuses it, and the error says who and where."""
    url = f"oci://{origin.host}/{repo}:stable"
    push("0.1.1", build("0.1.1"), key, creds, ca_file, url)
    wrong = docker_config(tmp_path / "wrong.json", origin.host, USER, "not-the-password")
    out = run_cli("check", "--json", "--manifest-url", url, "--registry-credentials",
                  str(wrong), "--ca-file", str(ca_file), "--public-key", str(key.public),
                  "--state-dir", str(tmp_path / "state"), "--platform", "linux-amd64")
    assert out.returncode == 1
    error = json.loads(out.stdout)["error"]
    assert error.startswith("transport: the token server 127.0.0.1 of registry "
                            f"{origin.host} refused user {USER} for repository:{repo}:pull "
                            "(HTTP 401)"), error
    assert "not-the-password" not in out.stdout + out.stderr


def test_a_layer_other_than_the_signed_build_is_refused(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, build: Callable[[str], Path]) -> None:
    """An index whose platform layer is another blob than the signed sha256: refused
    (``sha256``) before anything is downloaded."""
    genuine, other = build("0.1.1"), build("0.1.2")
    manifest = oci_release.oci_manifest(release_tool.stamp(release_tool.build_manifest(
        "0.1.1", "oci:", "2026-01-01T00:00:00Z",
        {p: (release_tool.hashlib.sha256(genuine.read_bytes()).hexdigest(),
             genuine.stat().st_size) for p in release_tool.PLATFORMS}),
        serial=1, expires=None))
    body = json.dumps(manifest).encode()
    sha, size = release_tool.hashlib.sha256(other.read_bytes()).hexdigest(), other.stat().st_size
    artifact = oci_release.build("0.1.1", {p: (other, sha, size) for p in release_tool.PLATFORMS},
                                 body, release_tool.sign(body, key.loaded()))
    url = f"oci://{origin.host}/{repo}:stable"
    oci_release.push(url, artifact, credentials=creds, ca_file=ca_file, log=lambda _: None)
    result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(creds)))
    assert result.outcome == "error" and result.error_kind == "sha256", result
    assert "the registry names sha256:" + sha in result.error
    assert list((tmp_path / "state" / "bin").iterdir()) == []


def test_a_tampered_blob_in_the_registry_is_refused(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """The registry's storage serves other bytes for the build's digest: the download is
    refused (``sha256``) and the running agent is untouched."""
    url = f"oci://{origin.host}/{repo}:stable"
    # A build of this test's own: blobs are shared by every repository of the registry.
    own = script_agent(tmp_path / "agent-0.1.1", "0.1.1", f"# {repo}\nsleep 60")
    manifest = push("0.1.1", own, key, creds, ca_file, url)
    blob = origin.blob_file("sha256:" + manifest["binaries"]["linux-amd64"]["sha256"])
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0xFF
    blob.write_bytes(bytes(data))
    lch = launcher()
    lch.start(*https_args(lch, "--manifest-url", url, ca_file=ca_file,
                          public_keys=(key.public,)),
              "--registry-credentials", str(creds), "--seed-binary", str(build("0.1.0")))
    lch.wait_healthy("0.1.0")
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("sha256:")
                        and s.get("consecutive_failures", 0) >= 2, what="two sha256 refusals")
    assert "sha256 mismatch for https://" in st["last_error"]
    assert st["current"]["version"] == "0.1.0" and st["bad"] == []
    assert sorted(p.name for p in (lch.state_dir / "bin").iterdir()) == ["agent"]
    assert (lch.health() or {}).get("version") == "0.1.0"
    assert lch.stop() == 0


def test_the_mirror_is_asked_first_and_the_origin_is_the_fallback(
        origin: RegistryProcess, mirror: RegistryProcess, tokens: TokenServer, key: Key,
        creds: Path, ca_file: Path, repo: str, tmp_path: Path,
        build: Callable[[str], Path]) -> None:
    """The same release on a mirror and the origin: the mirror serves all of it (the origin
    is never asked); with the mirror down, or lacking the repository, the origin does."""
    push("0.1.1", build("0.1.1"), key, creds, ca_file, f"oci://{origin.host}/{repo}:stable",
         f"oci://{mirror.host}/{repo}:stable")
    url = f"oci://{origin.host}/{repo}:stable"

    def origin_pulls() -> int:
        return sum(r["scope"] == f"repository:{repo}:pull" for r in tokens.requests)

    before = origin_pulls()
    served = stage(settings(url, tmp_path / "a", ca_file, key, mirrors=[mirror.host],
                            registry_credentials=str(creds)))
    assert served.outcome == "staged", served
    assert origin_pulls() == before, "the origin was asked although the mirror had it all"
    down = f"127.0.0.1:{free_port()}"
    for mirrors in ([down], [f"{mirror.host}/elsewhere"]):
        fallback = stage(settings(url, tmp_path / mirrors[0].replace("/", "-"), ca_file, key,
                                  mirrors=mirrors, registry_credentials=str(creds)))
        assert fallback.outcome == "staged", fallback
        assert fallback.sha256 == served.sha256
    assert origin_pulls() >= before + 2


@pytest.mark.parametrize("wrong", ["other_key", "layer", "old_serial"])
def test_a_mirror_with_a_wrong_release_is_skipped_for_the_origin(
        wrong: str, origin: RegistryProcess, mirror: RegistryProcess, key: Key, creds: Path,
        ca_file: Path, repo: str, tmp_path: Path, build: Callable[[str], Path],
        caplog: pytest.LogCaptureFixture) -> None:
    """The mirror serves a release that is whole and consistent but not acceptable: signed
    by another key, a layer other than the signed build, or a serial below this host's
    floor. The check warns naming the mirror and stages the origin's release."""
    url = f"oci://{origin.host}/{repo}:stable"
    good = release_tool.publish_oci("0.1.2", push_urls=(url,), binary=build("0.1.2"),
                                    sign_key=key.secret, credentials=creds, ca_file=ca_file,
                                    serial=2000, log=lambda _: None)
    at_mirror = f"oci://{mirror.host}/{repo}:stable"
    if wrong == "layer":  # the origin's signed manifest over another build's layer
        body = (json.dumps(good, indent=2) + "\n").encode()
        other = build("0.1.1")
        builds = {p: (other, hashlib.sha256(other.read_bytes()).hexdigest(),
                      other.stat().st_size) for p in good["binaries"]}
        oci_release.push(at_mirror, oci_release.build("0.1.2", builds, body, sign(body, key)),
                         credentials=None, ca_file=ca_file, log=lambda _: None)
    else:
        signer = make_key(tmp_path / "keys", "other") if wrong == "other_key" else key
        release_tool.publish_oci("0.1.2", push_urls=(at_mirror,), binary=build("0.1.1"),
                                 sign_key=signer.secret, ca_file=ca_file, serial=1000,
                                 log=lambda _: None)
    caplog.set_level(logging.WARNING)
    result = stage(settings(url, tmp_path, ca_file, key, mirrors=[mirror.host],
                            registry_credentials=str(creds), min_serial=1500))
    assert result.outcome == "staged", result
    staged = tmp_path / "state" / "bin" / str(result.file)
    assert staged.read_bytes() == build("0.1.2").read_bytes()
    assert f"mirror {mirror.host} serves a release of {url} that fails verification" \
        in caplog.text


def test_a_tag_moved_after_it_was_resolved_does_not_mix_releases(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, build: Callable[[str], Path]) -> None:
    """The tag moves to 0.1.2 right after this check read it: the check stages 0.1.1, all
    of it, and never asks for the tag again."""
    url = f"oci://{origin.host}/{repo}:stable"
    push("0.1.1", build("0.1.1"), key, creds, ca_file, url)
    asked: list[str] = []

    def moved_once(response: httpx.Response) -> None:
        asked.append(response.request.url.path)
        if response.request.url.path.endswith("/manifests/stable") \
                and response.status_code == 200 and len(
                    [p for p in asked if p.endswith("/manifests/stable")]) == 2:
            push("0.1.2", build("0.1.2"), key, creds, ca_file, url)

    with make_client(ca_file=str(ca_file)) as client:
        client.event_hooks["response"].append(moved_once)
        result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(creds)),
                       client)
    assert result.outcome == "staged" and result.version == "0.1.1", result
    staged = tmp_path / "state" / "bin" / result.file
    assert staged.read_bytes() == build("0.1.1").read_bytes()
    assert [p for p in asked if p.endswith("/manifests/stable")] == [
        f"/v2/{repo}/manifests/stable"] * 2  # the 401, then the answer: one resolution
    assert all("/manifests/sha256:" in p or "/blobs/sha256:" in p or p in ("/v2/", "/token")
               for p in asked if not p.endswith("/manifests/stable"))
    again = stage(settings(url, tmp_path / "later", ca_file, key,
                           registry_credentials=str(creds)))
    assert again.version == "0.1.2", "the tag did move: the next check sees it"


def test_blobs_redirected_to_storage_are_fetched_without_the_registry_token(
        ca: Any, tokens: TokenServer, key: Key, ca_file: Path, tmp_path: Path,
        build: Callable[[str], Path]) -> None:
    """A registry that answers blob GETs with a redirect to blob storage (another https
    origin): the launcher follows it, and the storage never sees the registry's token."""
    with ReleaseServer(tls_context(ca), host="localhost") as storage, RegistryProcess(
            tmp_path, ca, auth=tokens.auth_config(),
            redirect_to=storage.url("/")) as registry:
        own = docker_config(tmp_path / "config.json", registry.host, USER, PASSWORD)
        url = f"oci://{registry.host}/agent:stable"
        manifest = push("0.1.1", build("0.1.1"), key, own, ca_file, url)
        for path, body in registry.stored_blobs().items():
            storage.publish(path, Route(body=body))
        result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(own)))
    assert result.outcome == "staged", result
    sha = manifest["binaries"]["linux-amd64"]["sha256"]
    fetched = [r for r in storage.requests if sha in r.path]
    assert len(fetched) == 1
    assert all("Authorization" not in r.headers and "authorization" not in r.headers
               for r in storage.requests)


def test_a_storage_challenge_never_gets_the_registry_password(
        ca: Any, tokens: TokenServer, key: Key, ca_file: Path, tmp_path: Path,
        build: Callable[[str], Path]) -> None:
    """Blob storage (another origin the registry redirects to) answers 401 with a Bearer
    realm of its own: the check fails naming the storage, and that realm is never asked."""
    with ReleaseServer(tls_context(ca), host="localhost") as storage, \
            ReleaseServer(tls_context(ca), host="localhost") as collector, RegistryProcess(
            tmp_path, ca, auth=tokens.auth_config(),
            redirect_to=storage.url("/")) as registry:
        own = docker_config(tmp_path / "config.json", registry.host, USER, PASSWORD)
        url = f"oci://{registry.host}/agent:stable"
        push("0.1.1", build("0.1.1"), key, own, ca_file, url)
        collector.publish("/t", Route(body=b'{"token": "STOLEN"}'))
        for path in registry.stored_blobs():
            storage.publish(path, Route(status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{collector.url("/t")}",service="x"'}))
        result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(own)))
    assert result.outcome == "error", result
    assert "answered HTTP 401" in (result.error or "") and storage.url("/") in result.error
    assert collector.requests == []
    assert storage.requests and all("authorization" not in map(str.lower, r.headers)
                                    for r in storage.requests)


class _Watching(httpx.HTTPTransport):
    """The real transport; ``look()`` runs as each chunk of a blob arrives."""

    def __init__(self, look: Callable[[], None], **options: Any) -> None:
        super().__init__(**options)
        self.look = look

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/blobs/" not in request.url.path:
            return response
        inner, look = response.stream, self.look

        class Stream(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:  # type: ignore[union-attr]
                    yield chunk
                    look()

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx.Response(response.status_code, headers=response.headers,
                              stream=Stream(), extensions=response.extensions)


def test_a_blob_download_in_flight_is_in_the_transfer_file(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, build: Callable[[str], Path]) -> None:
    """While the build's blob streams from the registry, ``state_dir/transfer.json`` (what
    ``status`` shows) names it, as for an http download; the file goes when it is done."""
    url = f"oci://{origin.host}/{repo}:stable"
    manifest = push("0.1.1", build("0.1.1"), key, creds, ca_file, url)
    size = manifest["binaries"]["linux-amd64"]["size"]
    state = tmp_path / "state"
    seen: list[dict[str, Any]] = []
    transport = _Watching(lambda: seen.append(read_transfer(state) or {}),
                          verify=ssl.create_default_context(cafile=str(ca_file)))
    with make_client(ca_file=str(ca_file), transport=transport) as client:
        result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(creds)),
                       client)
    assert result.outcome == "staged", result
    in_flight = [t for t in seen if t.get("total") == size]
    assert in_flight, seen
    assert in_flight[0]["version"] == "0.1.1" and in_flight[0]["kind"] == "full"
    assert f"/v2/{repo}/blobs/sha256:" in in_flight[0]["url"]
    assert read_transfer(state) is None


def test_a_cut_blob_download_resumes_from_the_registry(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The connection to the registry is cut twice in the middle of the build's blob: each
    time the download continues with a Range request to the registry itself (the blob's
    digest is its validator), and the build arrives whole without being sent twice."""
    big = sleeper(tmp_path, "0.1.1", pad=1 << 20)
    size = big.stat().st_size
    push("0.1.1", big, key, creds, ca_file, f"oci://{origin.host}/public/resume:stable")
    with CuttingRelay(origin.host, cuts=[300_000, 500_000]) as relay, \
            caplog.at_level(logging.INFO, logger="launcher"):
        result = stage(settings(f"oci://{relay.host}/public/resume:stable", tmp_path,
                                ca_file, key))
    assert result.outcome == "staged", result
    assert relay.cuts == [], "both cuts happened"
    staged = tmp_path / "state" / "bin" / Path(result.file).name
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == result.sha256
    assert staged.read_bytes() == big.read_bytes()
    resumed = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert len(resumed) >= 2, resumed
    assert re.search(r"resumed at byte \d+", caplog.text)
    # A restart would have carried 300 KB + 500 KB + the whole build; resuming, about one build.
    assert sum(relay.to_client) < size + 200_000, (relay.to_client, size)


def test_a_blob_cut_on_the_mirror_resumes_from_the_origin(
        origin: RegistryProcess, mirror: RegistryProcess, key: Key, creds: Path,
        ca_file: Path, tmp_path: Path) -> None:
    """The mirror's connection is cut on every attempt until the mirror is given up: the
    origin continues the same partial with a Range request (the blob's digest names it on
    every host), instead of fetching the build again from byte 0."""
    big = sleeper(tmp_path, "0.1.1", pad=1 << 20)
    repo = "public/resume-mirror"
    push("0.1.1", big, key, creds, ca_file, f"oci://{origin.host}/{repo}:stable",
         f"oci://{mirror.host}/{repo}:stable")
    build_blob = "/blobs/sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
    ranges: list[tuple[str, str | None]] = []

    def seen(request: httpx.Request) -> None:
        if request.url.path.endswith(build_blob):
            ranges.append((f"{request.url.host}:{request.url.port}",
                           request.headers.get("range")))

    with CuttingRelay(mirror.host, cuts=[200_000] * 4) as relay, \
            make_client(ca_file=str(ca_file)) as client:
        client.event_hooks["request"].append(seen)
        result = stage(settings(f"oci://{origin.host}/{repo}:stable", tmp_path, ca_file, key,
                                mirrors=[relay.host]), client)
    assert result.outcome == "staged", result
    assert (tmp_path / "state" / "bin" / str(result.file)).read_bytes() == big.read_bytes()
    assert relay.cuts == [], "every cut happened: the mirror was given up"
    from_origin = [r for host, r in ranges if host == origin.host]
    assert from_origin and from_origin[0] is not None and from_origin[0] != "bytes=0-", ranges



def own_pair(tmp_path: Path, repo: str) -> tuple[Path, Path]:
    """Two 1 MiB builds of this test's own (blobs are shared by every repository of the
    registry), alike but for their version: the patch between them is a few hundred bytes."""
    old, new = (script_agent(tmp_path / f"agent-{v}", v, f"# {repo}\nsleep 60") for v in
                ("0.1.1", "0.1.2"))
    for path in (old, new):
        with path.open("a") as f:
            f.write(("#" * 1023 + "\n") * 1024)
    return old, new


def blob_requests(client: httpx.Client) -> list[str]:
    """The digests of the blobs ``client`` asks for, in order."""
    asked: list[str] = []
    client.event_hooks["request"].append(
        lambda r: asked.append(r.url.path.rsplit("/", 1)[1]) if "/blobs/" in r.url.path
        else None)
    return asked


def test_the_release_tool_pushes_patches_and_a_launcher_rebuilds_from_one(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """``--oci-push --delta-from FILE``: the patch is a layer of the platform's manifest,
    signed by digest; a real launcher on the base updates through the registry from it."""
    old, new = build("0.1.1"), build("0.1.2")
    url = f"oci://{origin.host}/{repo}:stable"
    push("0.1.1", old, key, creds, ca_file, url)
    lch = launcher()
    lch.start(*https_args(lch, "--manifest-url", url, ca_file=ca_file,
                          public_keys=(key.public,)),
              "--registry-credentials", str(creds), "--seed-binary", str(old))
    lch.wait_state(lambda s: s.get("phase") == "committed", what="0.1.1 committed")
    pushed = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "release_tool.py"), "0.1.2", "--binary",
         str(new), "--sign-key", str(key.secret), "--oci-push", url, "--delta-from", str(old),
         "--registry-credentials", str(creds), "--ca-file", str(ca_file)],
        capture_output=True, text=True, timeout=120, check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert re.search(r"delta from [0-9a-f]{12} for linux-amd64: \d+ bytes", pushed.stdout)
    lch.wait_log(r"rebuilt 0\.1\.2 from a \d+ byte patch", timeout=30)
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.2", what="0.1.2 committed")
    assert (lch.state_dir / "bin" / "agent").read_bytes() == new.read_bytes()
    assert lch.stop() == 0


@pytest.mark.parametrize("case", ["patched", "tampered", "other_base", "unlisted"])
def test_a_patch_from_the_registry_or_the_full_build(
        case: str, origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With the base installed the patch blob is pulled, not the build's; a patch whose
    stored bytes were changed, an installed build that is not the base, or a patch the
    platform's manifest does not list (only the signed manifest does) each end in the
    full build, staged as signed."""
    old, new = own_pair(tmp_path, repo)
    url = f"oci://{origin.host}/{repo}:stable"
    manifest = release_tool.publish_oci("0.1.2", push_urls=(url,), binary=new,
                                        sign_key=key.secret, credentials=creds,
                                        ca_file=ca_file, delta_from=[str(old)],
                                        log=lambda _: None)
    (listed,) = manifest["binaries"]["linux-amd64"]["deltas"]
    patch, full = "sha256:" + listed["sha256"], "sha256:" + manifest["binaries"][
        "linux-amd64"]["sha256"]
    assert listed["url"] == "oci:" + patch and listed["size"] < 5_000
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "agent").write_bytes(old.read_bytes()
                                          + (b"\n" if case == "other_base" else b""))
    if case == "tampered":
        blob = origin.blob_file(patch)
        blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    if case == "unlisted":  # the same signed manifest, pushed without the patch layers
        body = json.dumps(manifest, indent=2).encode() + b"\n"
        bare = oci_release.build("0.1.2", {p: (new, full[7:], new.stat().st_size) for p in
                                           release_tool.PLATFORMS},
                                 body, release_tool.sign(body, key.loaded()))
        oci_release.push(url, bare, credentials=creds, ca_file=ca_file, log=lambda _: None)
    caplog.set_level(logging.INFO, logger="launcher")
    with make_client(ca_file=str(ca_file)) as client:
        asked = blob_requests(client)
        result = stage(settings(url, tmp_path, ca_file, key, registry_credentials=str(creds)),
                       client)
    assert result.outcome == "staged", result
    assert (state / "bin" / str(result.file)).read_bytes() == new.read_bytes()
    binaries = [d for d in asked if d in (patch, full)]
    expected = {"patched": [patch], "tampered": [patch, full], "other_base": [full],
                "unlisted": [full]}[case]
    assert binaries == expected, asked
    if case in ("tampered", "unlisted"):
        assert "downloading the full build" in caplog.text
    assert {p.name for p in (state / "bin").iterdir()} == {"agent", result.file}


# ---- review of "OCI releases carry patches" (efca3a7) -------------------------------------


def installed(tmp_path: Path, data: bytes) -> Path:
    """``state/bin/agent`` holding ``data``; the state directory."""
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "agent").write_bytes(data)
    return state


@pytest.mark.parametrize("on_base", [False, True])
def test_a_patch_that_fails_on_the_mirror_leaves_the_mirror_its_full_build(
        on_base: bool, mirror: RegistryProcess, key: Key, ca_file: Path, repo: str,
        tmp_path: Path) -> None:
    """Hosts reach the mirror only (the origin is down for them) and the mirror's patch blob
    is corrupt. A host that is not on the patch's base installs the mirror's full build; a
    host on the base must too: the patch failing is no reason to give up the mirror for the
    build it serves intact."""
    old, new = own_pair(tmp_path, repo)
    manifest = release_tool.publish_oci(
        "0.1.2", push_urls=(f"oci://{mirror.host}/{repo}:stable",), binary=new,
        sign_key=key.secret, ca_file=ca_file, delta_from=[str(old)], log=lambda _: None)
    (listed,) = manifest["binaries"]["linux-amd64"]["deltas"]
    blob = mirror.blob_file("sha256:" + listed["sha256"])
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    state = installed(tmp_path, old.read_bytes() if on_base else b"#!/bin/sh\n# 0.1.0\n")
    down = f"127.0.0.1:{free_port()}"
    result = stage(settings(f"oci://{down}/{repo}:stable", tmp_path, ca_file, key,
                            mirrors=[mirror.host]))
    assert result.outcome == "staged", result
    assert (state / "bin" / str(result.file)).read_bytes() == new.read_bytes()


def test_a_patch_does_not_stage_a_build_above_max_binary_bytes(
        origin: RegistryProcess, key: Key, creds: Path, ca_file: Path, repo: str,
        tmp_path: Path) -> None:
    """``--max-binary-bytes`` is the largest build accepted: a signed build above it is
    refused whether it would be downloaded whole or rebuilt from a small patch."""
    old, new = own_pair(tmp_path, repo)
    url = f"oci://{origin.host}/{repo}:stable"
    release_tool.publish_oci("0.1.2", push_urls=(url,), binary=new, sign_key=key.secret,
                             credentials=creds, ca_file=ca_file, delta_from=[str(old)],
                             log=lambda _: None)
    limit = new.stat().st_size - 1
    for data in (b"#!/bin/sh\n# 0.1.0\n", old.read_bytes()):  # the full build; the patch
        state = installed(tmp_path / str(len(data)), data)
        result = stage(settings(url, tmp_path / str(len(data)), ca_file, key,
                                registry_credentials=str(creds), max_binary_bytes=limit))
        assert result.outcome == "error", result
        assert f"exceeds the limit of {limit} bytes" in (result.error or ""), result
        assert sorted(p.name for p in (state / "bin").iterdir()) == ["agent"]


def test_the_full_build_after_a_slow_patch_asks_for_a_fresh_token(
        ca: Any, key: Key, ca_file: Path, repo: str, tmp_path: Path) -> None:
    """Registry tokens are short-lived (the token server says ``expires_in``). A patch whose
    download outlives the token and then fails: the full build's download must get a new
    token, as every metadata request does on a 401, instead of failing the check."""
    (tmp_path / "tokens").mkdir()
    (tmp_path / "registry").mkdir()
    with TokenServer(ca, tmp_path / "tokens", users={USER: PASSWORD}) as tokens, \
            RegistryProcess(tmp_path / "registry", ca, auth=tokens.auth_config()) as registry:
        own = docker_config(tmp_path / "config.json", registry.host, USER, PASSWORD)
        url = f"oci://{registry.host}/{repo}:stable"
        old, new = own_pair(tmp_path, repo)
        manifest = release_tool.publish_oci("0.1.2", push_urls=(url,), binary=new,
                                            sign_key=key.secret, credentials=own,
                                            ca_file=ca_file, delta_from=[str(old)],
                                            log=lambda _: None)
        (listed,) = manifest["binaries"]["linux-amd64"]["deltas"]
        blob = registry.blob_file("sha256:" + listed["sha256"])
        blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # the patch will fail its sha256
        tokens.lifetime_s = 3  # tokens from now on are usable for 3 s (expires_in 3)
        state = installed(tmp_path, old.read_bytes())
        patch_path = f"/blobs/sha256:{listed['sha256']}"

        def slow_patch(response: httpx.Response) -> None:
            if response.request.url.path.endswith(patch_path) and response.is_success:
                time.sleep(5)  # a slow link: the patch takes longer than the token lives

        with make_client(ca_file=str(ca_file)) as client:
            client.event_hooks["response"].append(slow_patch)
            result = stage(settings(url, tmp_path, ca_file, key,
                                    registry_credentials=str(own)), client)
    assert result.outcome == "staged", result
    assert (state / "bin" / str(result.file)).read_bytes() == new.read_bytes()


def test_a_resumption_after_the_token_expired_asks_for_a_new_one(
        ca: Any, key: Key, ca_file: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A slow link: the build's blob is still arriving when the registry token it started
    with expires, and then the connection is cut. The Range request that continues it must
    carry a fresh token; with the first one the registry answers 401 and the check fails."""
    (tmp_path / "tokens").mkdir()
    (tmp_path / "registry").mkdir()
    with TokenServer(ca, tmp_path / "tokens", users={USER: PASSWORD}) as tokens, \
            RegistryProcess(tmp_path / "registry", ca, auth=tokens.auth_config()) as registry, \
            CuttingRelay(registry.host, cuts=[300_000]) as relay:
        big = sleeper(tmp_path, "0.1.1", pad=1 << 20)
        push("0.1.1", big, key, docker_config(tmp_path / "push.json", registry.host, USER,
                                              PASSWORD), ca_file,
             f"oci://{registry.host}/slow/resume:stable")
        tokens.lifetime_s = 3  # tokens from now on are usable for 3 s (expires_in 3)
        blob = "/blobs/sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
        ranges: list[str | None] = []

        def slow_start(response: httpx.Response) -> None:
            if response.request.url.path.endswith(blob):
                ranges.append(response.request.headers.get("range"))
                if response.is_success and len(ranges) == 1:
                    time.sleep(5)  # the body starts after the token's life

        own = docker_config(tmp_path / "config.json", relay.host, USER, PASSWORD)
        with make_client(ca_file=str(ca_file)) as client, \
                caplog.at_level(logging.INFO, logger="launcher"):
            client.event_hooks["response"].append(slow_start)
            result = stage(settings(f"oci://{relay.host}/slow/resume:stable", tmp_path,
                                    ca_file, key, registry_credentials=str(own)), client)
    assert result.outcome == "staged", result
    assert relay.cuts == [], "the cut happened"
    assert (tmp_path / "state" / "bin" / str(result.file)).read_bytes() == big.read_bytes()
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None, ranges
    assert re.search(r"resumed at byte \d+", caplog.text)
