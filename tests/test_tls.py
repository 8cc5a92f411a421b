"""Real TLS: a loopback https server with ``trustme`` certificates and a real launcher.

Nothing here passes ``--allow-http``: every hop must be https and every certificate must
chain to a trusted CA (certifi's, plus ``--ca-file``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Launcher, https_args
from release_server import ReleaseServer, Route, tls_context


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)


def manifest(version: str, url: str, data: bytes) -> bytes:
    entry = {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return json.dumps({"version": version, "binaries": {
        "linux-amd64": entry, "linux-arm64": entry}}).encode()


@pytest.fixture
def tls(ca: Any) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


@pytest.fixture
def tls2(ca: Any) -> Iterator[ReleaseServer]:
    """A second https origin (``localhost``, another port)."""
    with ReleaseServer(tls_context(ca), host="localhost") as server:
        yield server


def start(launcher: Callable[..., Launcher], seed: Path, url: str,
          ca_file: Path | None) -> Launcher:
    lch = launcher()
    lch.start(*https_args(lch, "--manifest-url", url, ca_file=ca_file), "--seed-binary",
              str(seed))
    lch.wait_healthy("0.1.0")
    return lch


def assert_untouched(lch: Launcher, error_prefix: str) -> str:
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith(error_prefix)
                        and s.get("consecutive_failures", 0) >= 2,
                        what=f"two failed checks with {error_prefix}")
    assert st["current"]["version"] == "0.1.0" and st["phase"] == "committed"
    assert st["bad"] == []
    assert sorted(p.name for p in (lch.state_dir / "bin").iterdir()) == ["agent"]
    assert (lch.health() or {}).get("version") == "0.1.0"
    error: str = st["last_error"]
    return error


def test_update_over_https_with_the_ca_file(tls: ReleaseServer, ca_file: Path,
                                            launcher: Callable[..., Launcher],
                                            build: Callable[[str], Path]) -> None:
    """--ca-file trusts a private CA: the update installs over https end to end."""
    data = build("0.1.1").read_bytes()
    tls.publish("/bin/agent", Route(body=data))
    tls.publish("/version.json", Route(body=manifest("0.1.1", tls.url("/bin/agent"), data)))
    lch = start(launcher, build("0.1.0"), tls.url("/version.json"), ca_file)
    lch.wait_healthy("0.1.1")
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    assert st["last_error"] is None
    assert lch.stop() == 0


def test_untrusted_certificate_is_a_tls_error(tls: ReleaseServer,
                                               launcher: Callable[..., Launcher],
                                               build: Callable[[str], Path]) -> None:
    """Without the CA the certificate does not verify: the error says so, nothing changes."""
    tls.publish("/version.json", Route(body=b"{}"))
    lch = start(launcher, build("0.1.0"), tls.url("/version.json"), None)
    error = assert_untouched(lch, "transport:")
    assert "TLS certificate verification failed" in error
    assert tls.requests == [], "no request may be sent over an unverified connection"
    assert lch.stop() == 0


def test_redirect_from_https_to_http_is_refused(tls: ReleaseServer,
                                                launcher: Callable[..., Launcher],
                                                build: Callable[[str], Path],
                                                ca_file: Path) -> None:
    """An https manifest URL redirected to plain http: refused before the http request."""
    with ReleaseServer() as plain:
        plain.publish("/version.json", Route(body=b"{}"))
        tls.publish("/version.json", Route.redirect(plain.url("/version.json")))
        lch = start(launcher, build("0.1.0"), tls.url("/version.json"), ca_file)
        error = assert_untouched(lch, "https:")
        assert plain.url("/version.json") in error and "redirect" in error
        assert plain.requests == []
        assert lch.stop() == 0


def test_redirect_from_https_to_https_is_followed(tls: ReleaseServer, tls2: ReleaseServer,
                                                  launcher: Callable[..., Launcher],
                                                  build: Callable[[str], Path],
                                                  ca_file: Path) -> None:
    """Manifest and binary both redirected to another https origin: the update installs."""
    data = build("0.1.1").read_bytes()
    tls2.publish("/real/agent", Route(body=data))
    tls2.publish("/real/version.json", Route(body=manifest("0.1.1", tls.url("/bin/agent"),
                                                           data)))
    tls.publish("/version.json", Route.redirect(tls2.url("/real/version.json")))
    tls.publish("/bin/agent", Route.redirect(tls2.url("/real/agent"), status=307))
    lch = start(launcher, build("0.1.0"), tls.url("/version.json"), ca_file)
    lch.wait_healthy("0.1.1")
    assert [r.path for r in tls2.requests].count("/real/agent") == 1
    assert lch.stop() == 0


def test_plain_http_binary_url_in_the_manifest_is_refused(tls: ReleaseServer,
                                                          launcher: Callable[..., Launcher],
                                                          build: Callable[[str], Path],
                                                          ca_file: Path) -> None:
    """An https manifest naming an http binary: refused without --allow-http, never fetched."""
    data = build("0.1.1").read_bytes()
    with ReleaseServer() as plain:
        plain.publish("/bin/agent", Route(body=data))
        tls.publish("/version.json", Route(body=manifest("0.1.1", plain.url("/bin/agent"),
                                                         data)))
        lch = start(launcher, build("0.1.0"), tls.url("/version.json"), ca_file)
        error = assert_untouched(lch, "https:")
        assert plain.url("/bin/agent") in error and "--allow-http" in error
        assert plain.requests == []
        assert lch.stop() == 0


def check(url: str, ca_file: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    out = run_cli("check", "--json", "--manifest-url", url, "--ca-file", str(ca_file),
                  "--state-dir", str(tmp_path / "state"), "--platform", "linux-amd64",
                  "--allow-unsigned")
    result: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, result


def test_redirect_loop_is_a_clear_error(tls: ReleaseServer, ca_file: Path,
                                        tmp_path: Path) -> None:
    """/a -> /b -> /a ...: stopped at the hop limit, named as too many redirects."""
    tls.publish("/a", Route.redirect(tls.url("/b")))
    tls.publish("/b", Route.redirect(tls.url("/a")))
    code, result = check(tls.url("/a"), ca_file, tmp_path)
    assert code == 1
    assert result["error"] == (f"transport: too many redirects from {tls.url('/a')} "
                               "(at most 5)")
    assert len(tls.requests) == 6


@pytest.mark.parametrize(("hops", "ok"), [(5, True), (6, False)])
def test_redirect_hop_limit(hops: int, ok: bool, tls: ReleaseServer, ca_file: Path,
                            tmp_path: Path) -> None:
    """Five redirects are followed; the sixth is refused."""
    for n in range(hops):
        tls.publish(f"/hop{n}", Route.redirect(tls.url(f"/hop{n + 1}")))
    tls.publish(f"/hop{hops}", Route(body=manifest("0.1.1", tls.url("/bin"), b"x")))
    code, result = check(tls.url("/hop0"), ca_file, tmp_path)
    if ok:
        assert code == 0 and result["outcome"] == "install", result
    else:
        assert code == 1 and "too many redirects" in result["error"]


def test_plain_http_manifest_url_stays_a_config_error(tmp_path: Path) -> None:
    """Without --allow-http an http:// manifest URL is refused at start (exit 2)."""
    out = run_cli("run", "--manifest-url", "http://127.0.0.1:1/version.json",
                  "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2 and "https" in out.stderr
