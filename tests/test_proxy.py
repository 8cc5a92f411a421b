"""A real proxy (Debian's tinyproxy, with Basic authentication) between the launcher and a real
https release server: ``--proxy``, ``--proxy-credentials``, ``--proxy env``, and no secret in
the clear or in a log."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Launcher, free_port, https_args, run_cli, unavailable, wait_until
from release_server import ReleaseServer, Route, tls_context
from test_tls import manifest

from launcher import proxy, redact
from launcher.errors import ConfigError, InsecureError
from launcher.sources.http import make_client, transport_error

USER, PASSWORD = "fleet", "pr0xy-s3cret-pw"


class Tinyproxy:
    """``tinyproxy -d`` on a loopback port, requiring ``USER:PASSWORD``; its log at hand."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("tinyproxy") is None:
            unavailable("tinyproxy is not installed (apt-get install tinyproxy)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = workdir / "tinyproxy.conf"
        conf.write_text(f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\n"
                        f"LogLevel Connect\nAllow 127.0.0.1\nBasicAuth {USER} {PASSWORD}\n"
                        "DisableViaHeader Yes\n")
        self.log_path = workdir / "tinyproxy.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=log,
                                         stderr=log)
        wait_until(self._listening, 10, "tinyproxy listening")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tinyproxy exited {self.proc.returncode}: {self.log()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    tp = Tinyproxy(tmp_path)
    yield tp
    tp.stop()


@pytest.fixture
def tls(ca: Any) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


@pytest.fixture
def plain() -> Iterator[ReleaseServer]:
    with ReleaseServer() as server:
        yield server


def credentials(tmp_path: Path, line: str = f"{USER}:{PASSWORD}", mode: int = 0o600) -> Path:
    path = tmp_path / "proxy.cred"
    path.write_text(line + "\n")
    path.chmod(mode)
    return path


def publish(tls: ReleaseServer, build: Callable[[str], Path], version: str) -> None:
    data = build(version).read_bytes()
    tls.publish("/bin/agent", Route(body=data))
    tls.publish("/version.json", Route(body=manifest(version, tls.url("/bin/agent"), data)))


def test_update_installs_through_an_authenticating_proxy(
        tinyproxy: Tinyproxy, tls: ReleaseServer, ca_file: Path, tmp_path: Path,
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """A real launcher updates over https through tinyproxy's CONNECT with Basic auth; the
    password is in no log, journal or status, and an HTTPS_PROXY in the environment is
    ignored when --proxy names the proxy."""
    publish(tls, build, "0.1.1")
    lch = launcher()
    cred = credentials(tmp_path)
    lch.start(*https_args(lch, "--manifest-url", tls.url("/version.json"), ca_file=ca_file),
              "--seed-binary", str(build("0.1.0")), "--proxy", tinyproxy.url,
              "--proxy-credentials", str(cred),
              env={"HTTPS_PROXY": f"http://127.0.0.1:{free_port()}"})  # dead: must be ignored
    lch.wait_healthy("0.1.1", timeout=30)
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    assert f"CONNECT 127.0.0.1:{tls.port}" in tinyproxy.log()
    status = json.loads(run_cli("status", "--json", "--state-dir", str(lch.state_dir)).stdout)
    assert status["proxy"] == f"{tinyproxy.url}, credentials from {cred}"
    assert lch.stop() == 0
    for text in (lch.log(), (lch.state_dir / "state.json").read_text(), json.dumps(status)):
        assert PASSWORD not in text


def test_a_refused_proxy_login_keeps_the_agent_and_hides_the_password(
        tinyproxy: Tinyproxy, tls: ReleaseServer, ca_file: Path, tmp_path: Path,
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """Wrong credentials: the check fails as a transport error naming the proxy's refusal, the
    agent runs on untouched, and the wrong password is masked everywhere."""
    publish(tls, build, "0.1.1")
    lch = launcher()
    wrong = "wr0ng-passw0rd"
    lch.start(*https_args(lch, "--manifest-url", tls.url("/version.json"), ca_file=ca_file),
              "--seed-binary", str(build("0.1.0")), "--proxy", tinyproxy.url,
              "--proxy-credentials", str(credentials(tmp_path, f"{USER}:{wrong}")))
    st = lch.wait_state(lambda s: s.get("consecutive_failures", 0) >= 2, timeout=20,
                        what="two failed checks")
    assert st["last_error"].startswith("transport: the proxy did not let the request")
    assert "401 Unauthorized" in st["last_error"]  # tinyproxy answers a bad login so
    assert st["current"]["version"] == "0.1.0" and st["bad"] == []
    assert (lch.health() or {}).get("version") == "0.1.0"
    assert lch.stop() == 0
    assert wrong not in lch.log() and wrong not in json.dumps(st)


def test_proxy_env_honours_https_proxy_and_no_proxy(
        tinyproxy: Tinyproxy, tls: ReleaseServer, ca_file: Path, tmp_path: Path) -> None:
    """``--proxy env``: HTTPS_PROXY routes https through the proxy; a host in NO_PROXY is
    reached directly (the proxy never hears of it)."""
    cred = credentials(tmp_path)
    tls.publish("/x", Route(body=b"hello"))
    s = {"proxy": "env", "proxy_credentials": str(cred)}
    env = {"HTTPS_PROXY": tinyproxy.url, "NO_PROXY": "example.invalid"}
    with make_client(ca_file=str(ca_file), proxy=proxy.from_settings(s, env)) as client:
        assert client.get(tls.url("/x")).content == b"hello"
    assert tinyproxy.log().count(f"CONNECT 127.0.0.1:{tls.port}") == 1
    env["no_proxy"] = "localhost,127.0.0.1"  # the lower-case spelling wins, as in curl
    with make_client(ca_file=str(ca_file), proxy=proxy.from_settings(s, env)) as client:
        assert client.get(tls.url("/x")).content == b"hello"
    assert tinyproxy.log().count(f"CONNECT 127.0.0.1:{tls.port}") == 1


def test_the_token_crosses_the_proxy_only_inside_tls(
        tinyproxy: Tinyproxy, tls: ReleaseServer, plain: ReleaseServer, ca_file: Path,
        tmp_path: Path) -> None:
    """An Authorization header reaches an https origin through the CONNECT tunnel (the
    proxy sees no request line or header of it); to a plain http origin through the proxy
    it is refused before anything is sent."""
    routes = proxy.from_settings({"proxy": tinyproxy.url,
                                  "proxy_credentials": str(credentials(tmp_path))}, {})
    tls.publish("/api", Route(body=b"{}"))
    plain.publish("/api", Route(body=b"{}"))
    token = {"Authorization": "Bearer ghp_tokenvalue"}
    with make_client(ca_file=str(ca_file), allow_http=True, proxy=routes) as client:
        assert client.get(tls.url("/api"), headers=token).status_code == 200
        assert tls.requests[-1].headers.get("Authorization") == "Bearer ghp_tokenvalue"
        with pytest.raises(InsecureError, match="in the clear"):
            client.get(plain.url("/api"), headers=token)
        assert client.get(plain.url("/api")).status_code == 200  # no secret: forwarded
    log = tinyproxy.log()
    assert "ghp_tokenvalue" not in log
    assert log.count(f"GET http://127.0.0.1:{plain.port}/api") == 1


def test_the_proxy_password_is_masked_in_errors(tmp_path: Path) -> None:
    """A password read from the credentials file, or in an HTTPS_PROXY URL, never shows in an
    error's words."""
    pw = "zz-unique-secret-1"
    proxy.read_credentials(credentials(tmp_path, f"{USER}:{pw}"))
    assert pw not in str(ConfigError(f"something quoted {pw} back"))
    routes = proxy.from_settings({"proxy": "env"},
                                 {"HTTPS_PROXY": "http://u:zz-env-secret-2@127.0.0.1:1"})
    assert routes is not None and routes.https is not None
    exc = transport_error("https://x.invalid/", httpx.ProxyError("zz-env-secret-2 leaked"))
    assert "zz-env-secret-2" not in str(exc)
    assert redact.MASK in str(exc)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o660])
def test_a_readable_credentials_file_is_refused(tmp_path: Path, mode: int) -> None:
    """A credentials file others can read is refused at start with the fix (exit 2)."""
    cred = credentials(tmp_path, mode=mode)
    r = run_cli("check", "--manifest-url", "https://127.0.0.1:1/version.json",
                "--allow-unsigned", "--state-dir", str(tmp_path / "s"), "--proxy",
                "http://127.0.0.1:3128", "--proxy-credentials", str(cred))
    assert r.returncode == 2
    assert f"chmod 600 {cred}" in r.stderr


def test_credentials_file_rules(tmp_path: Path) -> None:
    """A symlink, an empty or malformed line, another user's file: each a clear refusal."""
    good = credentials(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(ConfigError, match="not a regular file"):
        proxy.read_credentials(link)
    bad = tmp_path / "bad"
    for line in ("", "no-colon", ":pw", "user:"):
        bad.write_text(line)
        bad.chmod(0o600)
        with pytest.raises(ConfigError, match="user:password"):
            proxy.read_credentials(bad)
    if os.geteuid() == 0:
        os.chown(good, 12345, 12345)
        with pytest.raises(ConfigError, match="belongs to uid 12345"):
            proxy.read_credentials(good)


@pytest.mark.parametrize("url", ["http://u:p@proxy:3128", "https://proxy:3128", "proxy:3128",
                                 "http://proxy", "http://proxy:3128/path", "socks5://p:1"])
def test_proxy_urls_refused(url: str, tmp_path: Path) -> None:
    """Only http://HOST:PORT or env; credentials in the URL are refused (and not echoed)."""
    r = run_cli("check", "--manifest-url", "https://127.0.0.1:1/version.json",
                "--allow-unsigned", "--state-dir", str(tmp_path), "--proxy", url)
    assert r.returncode == 2, r.stderr
    assert "--proxy" in r.stderr
    assert ":p@" not in r.stderr


def test_no_proxy_matching() -> None:
    routes = proxy.Routes(https="http://p:1", http="http://p:2",
                          no_proxy=("internal.example", ".corp", "10.0.0.1:8443"))
    assert routes.proxy_for(httpx.URL("https://updates.example.com/")) == "http://p:1"
    assert routes.proxy_for(httpx.URL("http://updates.example.com/")) == "http://p:2"
    assert routes.proxy_for(httpx.URL("https://internal.example/")) is None
    assert routes.proxy_for(httpx.URL("https://a.internal.example/")) is None
    assert routes.proxy_for(httpx.URL("https://x.corp/")) is None
    assert routes.proxy_for(httpx.URL("https://10.0.0.1:8443/")) is None
    assert routes.proxy_for(httpx.URL("https://10.0.0.1/")) == "http://p:1"
    assert routes.proxy_for(httpx.URL("https://notinternal.example/")) == "http://p:1"
    everything = proxy.Routes(https="http://p:1", http=None, no_proxy=("*",))
    assert everything.proxy_for(httpx.URL("https://any/")) is None


def test_https_checks_stay_on_with_a_proxy(tinyproxy: Tinyproxy, plain: ReleaseServer,
                                           ca_file: Path, tmp_path: Path) -> None:
    """Without --allow-http a plain http URL is refused before the proxy hears of it."""
    routes = proxy.from_settings({"proxy": tinyproxy.url,
                                  "proxy_credentials": str(credentials(tmp_path))}, {})
    with make_client(ca_file=str(ca_file), proxy=routes) as client, \
            pytest.raises(InsecureError):
        client.get(plain.url("/x"))
    assert "GET http" not in tinyproxy.log()


TOKEN = "ghp_proxy-test-token-0123456789"  # noqa: S105 (a fake token for the fake GitHub)


def test_github_api_mode_through_the_proxy_keeps_the_token_inside_tls(
        tinyproxy: Tinyproxy, ca: Any, ca_file: Path, tmp_path: Path,
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """GitHub API mode through the proxy: the update installs, the API host gets the token,
    and the proxy only ever saw CONNECTs to the three origins."""
    from fake_github import FakeGitHub

    with FakeGitHub(ca) as gh:
        data = build("0.1.1").read_bytes()
        gh.add_release("v0.1.1", {"agent-linux-amd64": data, "agent-linux-arm64": data})
        lch = launcher()
        lch.start(*https_args(lch, "--github-repo", gh.repo, "--github-api-url", gh.api_url,
                              ca_file=ca_file),
                  "--seed-binary", str(build("0.1.0")), "--proxy", tinyproxy.url,
                  "--proxy-credentials", str(credentials(tmp_path)),
                  env={"GITHUB_TOKEN": TOKEN})
        lch.wait_healthy("0.1.1", timeout=30)
        assert lch.stop() == 0
        assert gh.api_requests()
        assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}"
                   for r in gh.api_requests())
        log = tinyproxy.log()
        for server in (gh.api, gh.objects):
            assert f"CONNECT 127.0.0.1:{server.port}" in log
        assert f"CONNECT localhost:{gh.web.port}" in log
        assert "GET " not in log and TOKEN not in log


def test_no_secret_for_a_plain_http_origin_crosses_the_proxy(
        tinyproxy: Tinyproxy, plain: ReleaseServer, tmp_path: Path) -> None:
    """--allow-http through the proxy: the GitHub token is not sent to a plain http API (the
    proxy forwards the request without it), and a manifest URL with ``user:password@`` is
    refused before a byte goes out, the proxy and the server hearing nothing of it."""
    common = ("--allow-http", "--allow-unsigned", "--state-dir", str(tmp_path / "s"),
              "--platform", "linux-amd64", "--proxy", tinyproxy.url,
              "--proxy-credentials", str(credentials(tmp_path)))
    r = run_cli("check", "--github-repo", "acme/agent", "--github-api-url", plain.url(""),
                *common, env={"GITHUB_TOKEN": TOKEN})
    assert r.returncode == 1 and "HTTP 404" in r.stdout  # the fake answers 404 to all
    assert [s.path for s in plain.requests] == ["/repos/acme/agent/releases/latest"]
    assert "Authorization" not in plain.requests[0].headers
    assert "GET http://127.0.0.1" in tinyproxy.log() and TOKEN not in tinyproxy.log()

    secret_url = plain.url("/version.json").replace("http://", "http://u:url-secret-pw@")
    r = run_cli("check", "--manifest-url", secret_url, *common)
    assert r.returncode == 1
    assert "check failed: https: refusing to send credentials for http://***@" in r.stdout
    assert "url-secret-pw" not in r.stdout + r.stderr
    assert len(plain.requests) == 1
    assert tinyproxy.log().count("GET http://") == 1


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "https://proxy:3128",
                                   "http://u:pw-in-env@proxy:notaport"])
def test_proxy_env_with_an_unusable_variable_is_refused_at_start(value: str,
                                                                 tmp_path: Path) -> None:
    """--proxy env and an HTTPS_PROXY the launcher cannot use: exit 2 naming the variable,
    its password masked."""
    r = run_cli("check", "--manifest-url", "https://127.0.0.1:1/version.json",
                "--allow-unsigned", "--state-dir", str(tmp_path), "--proxy", "env",
                env={"HTTPS_PROXY": value})
    assert r.returncode == 2, r.stderr
    assert "--proxy env: HTTPS_PROXY" in r.stderr
    assert "pw-in-env" not in r.stderr
