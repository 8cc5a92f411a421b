"""GitHub Releases: the API source against a fake GitHub over TLS, then a real launcher.

The fake speaks the API's shapes (``tests/fake_github.py``); the source turns a release into
the manifest the worker parses, so the rest of the update cycle is the one of every source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import Launcher, https_args, run_cli, wait_until
from fake_github import FakeGitHub
from range_server import RangeServer
from release_server import Route, tls_context

from launcher.errors import ManifestError, SignatureError, TransportError
from launcher.sources.base import Validators
from launcher.sources.github import GitHubSource, parse_releases, parse_sums, rate_limit_wait
from launcher.sources.http import make_client

PLATFORM = "linux-amd64"
TOKEN = "ghp_test-token-0123456789"  # noqa: S105 (a fake token for the fake GitHub)


def agent_assets(data: bytes) -> dict[str, bytes]:
    return {"agent-linux-amd64": data, "agent-linux-arm64": data}


@pytest.fixture
def gh(ca: Any) -> Iterator[FakeGitHub]:
    with FakeGitHub(ca) as fake:
        yield fake


@pytest.fixture
def client(ca_file: Path) -> Iterator[httpx.Client]:
    with make_client(timeout_s=5, ca_file=str(ca_file)) as http_client:
        yield http_client


def source(gh: FakeGitHub, client: httpx.Client, **kw: Any) -> GitHubSource:
    return GitHubSource(gh.repo, client=client, platform=PLATFORM, api_url=gh.api_url, **kw)


def built(gh: FakeGitHub, client: httpx.Client, **kw: Any) -> dict[str, Any]:
    fetched = source(gh, client, **kw).fetch(None)
    assert fetched.body is not None
    result: dict[str, Any] = json.loads(fetched.body)
    return result


# ---- the source ---------------------------------------------------------------------


def test_latest_release_becomes_a_manifest(gh: FakeGitHub, client: httpx.Client) -> None:
    """Version from the tag without its v; the exact asset; sha256 from its digest."""
    gh.add_release("v0.1.1", agent_assets(b"one"))
    gh.add_release("v0.1.2", {**agent_assets(b"two"), "agent-linux-amd64.sig": b"x"})
    got = built(gh, client)
    assert got["version"] == "0.1.2"
    assert got["binaries"] == {PLATFORM: {
        "url": gh.download_url("v0.1.2", "agent-linux-amd64"),
        "sha256": hashlib.sha256(b"two").hexdigest(), "size": 3}}
    sent = gh.api.requests[-1].headers
    assert sent["Accept"] == "application/vnd.github+json"
    assert sent["X-GitHub-Api-Version"] == "2022-11-28"
    assert "Authorization" not in sent


def test_drafts_and_prereleases_are_skipped(gh: FakeGitHub, client: httpx.Client) -> None:
    """The latest release is the newest published one; prereleases only when asked for."""
    gh.add_release("v0.1.1", agent_assets(b"stable"))
    gh.add_release("v0.2.0rc1", agent_assets(b"rc"), prerelease=True)
    gh.add_release("v0.3.0", agent_assets(b"draft"), draft=True)
    assert built(gh, client)["version"] == "0.1.1"
    assert built(gh, client, prereleases=True)["version"] == "0.2.0rc1"
    assert gh.api.requests[-1].path == f"/repos/{gh.repo}/releases?per_page=30"


def test_no_published_release(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.add_release("v0.3.0", agent_assets(b"draft"), draft=True)
    with pytest.raises(TransportError, match="HTTP 404"):
        source(gh, client).fetch(None)
    with pytest.raises(ManifestError, match="no published releases"):
        source(gh, client, prereleases=True).fetch(None)


def test_missing_asset_is_named(gh: FakeGitHub, client: httpx.Client) -> None:
    """No fuzzy matching: agent-linux-amd64.tar.gz is not agent-linux-amd64."""
    gh.add_release("v0.1.1", {"agent-linux-amd64.tar.gz": b"x", "agent-linux-arm64": b"y"})
    with pytest.raises(ManifestError) as caught:
        source(gh, client).fetch(None)
    assert str(caught.value) == ("GitHub release v0.1.1 has no asset named agent-linux-amd64 "
                                 "(has: agent-linux-amd64.tar.gz, agent-linux-arm64)")


def test_sha256sums_fallback(gh: FakeGitHub, client: httpx.Client) -> None:
    """Assets without a digest: the sha256 comes from the SHA256SUMS asset."""
    data = b"agent bytes"
    sums = (f"{'0' * 64}  agent-linux-arm64\n"
            f"{hashlib.sha256(data).hexdigest().upper()} *agent-linux-amd64\n").encode()
    gh.add_release("v0.1.1", {**agent_assets(data), "SHA256SUMS": sums}, digests=False)
    got = built(gh, client, token=TOKEN)
    assert got["binaries"][PLATFORM]["sha256"] == hashlib.sha256(data).hexdigest()
    assert [r.path for r in gh.web.requests] == [
        f"/{gh.repo}/releases/download/v0.1.1/SHA256SUMS"]
    assert all("Authorization" not in r.headers for r in gh.web.requests + gh.objects.requests)


def test_no_digest_and_no_sums_is_refused(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.add_release("v0.1.1", agent_assets(b"x"), digests=False)
    with pytest.raises(ManifestError, match="no sha256 digest and there is no SHA256SUMS"):
        source(gh, client).fetch(None)


def test_parse_sums() -> None:
    a, b = "a" * 64, "B" * 64
    assert parse_sums(f"{a}  one\n{b} *two\nnot a line\n\n{a[:-1]}  short\n") == {
        "one": a, "two": b.lower()}


def test_etag_gives_not_modified(gh: FakeGitHub, client: httpx.Client) -> None:
    """The validators of an accepted answer come back as If-None-Match: 304, no body."""
    gh.add_release("v0.1.1", agent_assets(b"x"))
    first = source(gh, client).fetch(None)
    assert first.validators.etag is not None and first.validators.etag.startswith('W/"')
    again = source(gh, client).fetch(first.validators)
    assert again.not_modified and again.body is None
    assert gh.api.requests[-1].headers["If-None-Match"] == first.validators.etag
    gh.add_release("v0.1.2", agent_assets(b"y"))
    assert source(gh, client).fetch(first.validators).body is not None


def test_token_goes_to_the_api_host_only(gh: FakeGitHub, client: httpx.Client) -> None:
    """httpx drops Authorization on a redirect to another origin (checked, not assumed)."""
    gh.add_release("v0.1.1", agent_assets(b"x"))
    built(gh, client, token=TOKEN)
    assert gh.api.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    # A moved repository: the API redirects, here to another origin.
    moved = gh.api.routes[gh.latest_path]
    gh.objects.publish("/moved/latest", moved)
    gh.api.publish(gh.latest_path, Route.redirect(gh.objects.url("/moved/latest"), 301))
    assert built(gh, client, token=TOKEN)["version"] == "0.1.1"
    assert gh.objects.requests[-1].path == "/moved/latest"
    assert "Authorization" not in gh.objects.requests[-1].headers


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_gives_the_time_to_the_reset(status: int, gh: FakeGitHub,
                                                client: httpx.Client) -> None:
    gh.add_release("v0.1.1", agent_assets(b"x"))
    gh.rate_limit(reset_epoch=1_000_120, status=status)
    with pytest.raises(TransportError) as caught:
        source(gh, client, now=lambda: 1_000_000.0).fetch(None)
    assert caught.value.retry_after_s == 120.0
    assert "rate limit" in str(caught.value)


def test_rate_limit_headers() -> None:
    """Retry-After wins (secondary limits); a plain 403 is no rate limit."""
    assert rate_limit_wait({"retry-after": "60", "x-ratelimit-remaining": "0",
                            "x-ratelimit-reset": "9"}, 0.0) == 60.0
    assert rate_limit_wait({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "90"},
                           100.0) == 0.0
    assert rate_limit_wait({"x-ratelimit-remaining": "3", "x-ratelimit-reset": "900"},
                           100.0) is None


def test_plain_forbidden_is_a_status_error(gh: FakeGitHub, client: httpx.Client) -> None:
    gh.api.publish(gh.latest_path, Route(status=403, body=b'{"message": "Forbidden"}'))
    with pytest.raises(TransportError, match="HTTP 403 Forbidden") as caught:
        source(gh, client).fetch(Validators())
    assert caught.value.retry_after_s is None


def test_signed_mode_takes_the_published_manifest(gh: FakeGitHub,
                                                  client: httpx.Client) -> None:
    """With keys configured the bytes are the release's version.json and its .minisig."""
    gh.add_release("v0.1.1", {**agent_assets(b"x"), "version.json": b'{"v": 1}',
                              "version.json.minisig": b"sig"})
    src = source(gh, client, signed=True)
    assert src.fetch(None).body == b'{"v": 1}'
    assert src.fetch_signature(16384) == b"sig"
    gh.add_release("v0.1.2", {**agent_assets(b"x"), "version.json": b"{}"})
    assert src.fetch(None).body == b"{}"
    with pytest.raises(SignatureError, match=r"no version.json.minisig asset"):
        src.fetch_signature(16384)


# ---- through the launcher ---------------------------------------------------------------


def api_args(gh: FakeGitHub) -> tuple[str, ...]:
    return ("--github-repo", gh.repo, "--github-api-url", gh.api_url)


def start(launcher: Callable[..., Launcher], seed: Path, source: tuple[str, ...],
          ca_file: Path, env: dict[str, str] | None = None,
          public_keys: tuple[Path, ...] = (), **over: str) -> Launcher:
    lch = launcher()
    lch.start(*https_args(lch, *source, ca_file=ca_file, public_keys=public_keys, **over),
              "--seed-binary", str(seed), env=env)
    lch.wait_healthy("0.1.0")
    return lch


def test_latest_release_installs_through_the_launcher(
        gh: FakeGitHub, ca_file: Path, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """API mode end to end; the token reaches the API host only; later polls get 304s."""
    gh.add_release("v0.1.1", agent_assets(build("0.1.1").read_bytes()))
    gh.add_release("v0.2.0rc1", agent_assets(b"rc"), prerelease=True)
    lch = start(launcher, build("0.1.0"), api_args(gh), ca_file, env={"GITHUB_TOKEN": TOKEN})
    lch.wait_healthy("0.1.1")
    lch.wait_state(lambda s: s.get("phase") == "committed" and s.get("etag") is not None,
                   what="0.1.1 committed and the release's ETag kept")
    # The token reaches the worker in its request (stdin), not its environment.
    worker = wait_until(lambda: _worker_environ(lch), 15, "a worker's environment")
    assert b"PATH=" in worker and TOKEN.encode() not in worker
    n = len(gh.api_requests())
    wait = lch.wait_log("manifest not modified")
    assert "GitHub release v0.1.1" in wait
    latest = gh.api_requests()
    assert len(latest) > n and latest[-1].headers["If-None-Match"].startswith('W/"')
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in latest)
    downloads = gh.web.requests + gh.objects.requests
    assert [r.path for r in gh.objects.requests].count(
        "/github-production-release-asset/1/0") == 1
    assert all("Authorization" not in r.headers for r in downloads)
    assert TOKEN not in (lch.state_dir / "state.json").read_text()
    assert lch.stop() == 0


def test_a_cut_asset_download_resumes_through_the_launcher(
        gh: FakeGitHub, ca: Any, ca_file: Path, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """API mode: the asset's bytes come (github.com 302, objects host 302) from a server that
    cuts the first transfer; the same check resumes it with a Range request through both
    redirects again, and the build installs without being sent twice."""
    data = build("0.1.1").read_bytes()
    cut = len(data) // 3
    release = gh.add_release("v0.1.1", agent_assets(data))
    with RangeServer(data, ssl_context=tls_context(ca)) as objects:
        objects.cuts = [cut]
        assert release["assets"][0]["name"] == "agent-linux-amd64"
        gh.objects.publish(f"/github-production-release-asset/{release['id']}/0",
                           Route.redirect(objects.url("/asset")))
        lch = start(launcher, build("0.1.0"), api_args(gh), ca_file)
        lch.wait_healthy("0.1.1")
        lch.wait_state(lambda s: s.get("phase") == "committed", what="0.1.1 committed")
        assert lch.stop() == 0
    assert [(r.status, r.range, r.if_range) for r in objects.requests] == [
        (200, None, None), (206, f"bytes={cut}-", '"v1"')]
    assert sum(r.sent for r in objects.requests) == len(data)
    # Logged under the URL the manifest names; each resumed request starts there again.
    assert re.search(rf"resuming \S+/releases/download/v0\.1\.1/agent-linux-amd64 at byte {cut}\n",
                     lch.log()), lch.log()


def _worker_environ(lch: Launcher) -> bytes | None:
    assert lch.proc is not None
    for p in psutil.Process(lch.proc.pid).children():
        with contextlib.suppress(psutil.Error, OSError):
            if "launcher.worker" in " ".join(p.cmdline()):
                return Path(f"/proc/{p.pid}/environ").read_bytes() or None
    return None


def test_digest_mismatch_is_refused(gh: FakeGitHub, ca_file: Path,
                                    launcher: Callable[..., Launcher],
                                    build: Callable[[str], Path]) -> None:
    """An asset whose bytes do not match its digest: sha256 error, the agent untouched."""
    gh.add_release("v0.1.1", agent_assets(build("0.1.1").read_bytes()),
                   digest_override={"agent-linux-amd64": "sha256:" + "0" * 64})
    lch = start(launcher, build("0.1.0"), api_args(gh), ca_file)
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("sha256:")
                        and s.get("consecutive_failures", 0) >= 2, what="sha256 errors")
    assert st["current"]["version"] == "0.1.0" and st["bad"] == []
    assert sorted(p.name for p in (lch.state_dir / "bin").iterdir()) == ["agent"]
    assert lch.stop() == 0


def test_rate_limit_is_waited_out_not_hammered(gh: FakeGitHub, ca_file: Path,
                                               launcher: Callable[..., Launcher],
                                               build: Callable[[str], Path]) -> None:
    """403 with x-ratelimit-reset 8 s ahead: with 0.3 s polls, the next request waits.
    (8 s, so that a loaded machine's launcher still asks once before the reset.)"""
    gh.add_release("v0.1.1", agent_assets(build("0.1.1").read_bytes()))
    reset = int(time.time()) + 8
    gh.rate_limit(reset_epoch=reset)
    lch = start(launcher, build("0.1.0"), api_args(gh), ca_file)
    st = lch.wait_state(lambda s: "rate limit" in (s.get("last_error") or ""),
                        what="a rate-limit error")
    assert st["last_error"].startswith("transport: GitHub API rate limit reached")
    gh.lift_rate_limit()
    lch.wait_healthy("0.1.1", timeout=20)
    requests = gh.api_requests()
    assert requests[1].at >= reset - 0.05, "polled again before the rate-limit reset"
    assert len([r for r in requests if r.at < reset]) == 1
    assert lch.stop() == 0


def test_latest_download_url_follows_redirects(gh: FakeGitHub, ca_file: Path,
                                               launcher: Callable[..., Launcher],
                                               build: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    """releases/latest/download/version.json: 302 to the tag, 302 to the objects host."""
    import release_tool  # packaging/, on sys.path through conftest

    assets = tmp_path / "assets"
    release_tool.write_assets("0.1.1", assets, binary=build("0.1.1"),
                              base_url=gh.web.url(f"/{gh.repo}/releases/download/v0.1.1"))
    gh.add_release("v0.1.1", {p.name: p.read_bytes() for p in sorted(assets.iterdir())},
                   digests=False)
    lch = start(launcher, build("0.1.0"), ("--manifest-url",
                                           gh.latest_download_url("version.json")), ca_file)
    lch.wait_healthy("0.1.1")
    assert gh.api.requests == []
    assert f"/{gh.repo}/releases/latest/download/version.json" in [
        r.path for r in gh.web.requests]
    assert lch.stop() == 0


def test_check_in_api_mode(gh: FakeGitHub, ca_file: Path, tmp_path: Path) -> None:
    """``check --github-repo``: what would be installed, or the missing asset named."""
    gh.add_release("v0.1.1", {"agent-linux-arm64": b"x", "SHA256SUMS": b""})
    args = ("check", *api_args(gh), "--ca-file", str(ca_file), "--platform", PLATFORM,
            "--state-dir", str(tmp_path / "s"), "--allow-unsigned")
    out = run_cli(*args)
    assert out.returncode == 1
    assert "has no asset named agent-linux-amd64" in out.stdout
    gh.add_release("v0.1.2", agent_assets(b"x"))
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["version"] == "0.1.2"


@pytest.mark.parametrize(("args", "message"), [
    (("--github-repo", "a/b", "--manifest-url", "https://x/v.json"), "both set"),
    (("--github-repo", "not-a-repo"), "use OWNER/NAME"),
    (("--github-repo", "a/b", "--github-api-url", "http://127.0.0.1:1"), "plain http"),
])
def test_github_configuration_errors(args: tuple[str, ...], message: str,
                                     tmp_path: Path) -> None:
    out = run_cli("check", *args, "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2 and message in out.stderr, out


def test_github_settings_from_the_environment(tmp_path: Path) -> None:
    from launcher import settings

    s = settings.load({}, environ={"NGINX_MANAGER_GITHUB_REPO": "acme/agent",
                                   "NGINX_MANAGER_GITHUB_PRERELEASE": "true"})
    assert s.github_repo == "acme/agent" and s.github_prerelease
    assert s.manifest_url == "https://api.github.com/repos/acme/agent/releases/latest"
    file = tmp_path / "c.toml"
    file.write_text('github_repo = "acme/agent"\n')
    with pytest.raises(settings.ConfigError, match="both set"):
        settings.load({"manifest_url": "https://x/v.json"}, environ={}, config_file=file)


def test_signed_release_through_the_api(gh: FakeGitHub, ca_file: Path,
                                        launcher: Callable[..., Launcher],
                                        build: Callable[[str], Path], tmp_path: Path) -> None:
    """With --public-key the release's version.json must carry its .minisig, or nothing moves."""
    import release_tool
    from signing import make_key

    key = make_key(tmp_path / "keys", "release")
    unsigned, signed = tmp_path / "unsigned", tmp_path / "signed"
    for out, sign_key, version in ((unsigned, None, "0.1.1"), (signed, key.secret, "0.1.2")):
        release_tool.write_assets(version, out, binary=build(version), sign_key=sign_key,
                                  base_url=gh.web.url(f"/{gh.repo}/releases/download/v{version}"))
    gh.add_release("v0.1.1", {p.name: p.read_bytes() for p in sorted(unsigned.iterdir())})
    lch = start(launcher, build("0.1.0"), api_args(gh), ca_file, public_keys=(key.public,))
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("signature:")
                        and s.get("consecutive_failures", 0) >= 2, what="signature errors")
    assert "version.json.minisig" in st["last_error"]
    assert st["current"]["version"] == "0.1.0"
    gh.add_release("v0.1.2", {p.name: p.read_bytes() for p in sorted(signed.iterdir())})
    lch.wait_healthy("0.1.2")
    assert "manifest signature verified" in lch.log()
    assert lch.stop() == 0


def test_an_api_answer_nested_too_deeply_is_a_manifest_error() -> None:
    """json.loads raises RecursionError, not ValueError, on deep nesting: it must still be
    the check's clear error, not a crash of the worker."""
    deep = b"[" * 100_000 + b"]" * 100_000
    for many in (True, False):
        with pytest.raises(ManifestError, match="nested too deeply"):
            parse_releases(deep, many=many)
