"""What goes wrong at the source never disturbs the running agent and never marks a build bad.

Each case runs a real launcher (or the real ``check`` command) against a real server on
loopback; the agent's ``/healthz`` proves it kept running, ``status`` shows the cause.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Launcher, UpdateServer, fast_args, free_port, run_cli, script_agent
from release_server import ReleaseServer, Route


def manifest(version: str, url: str, sha: str, size: int | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"url": url, "sha256": sha}
    if size is not None:
        entry["size"] = size
    return {"version": version, "release_date": "2026-02-10T21:00:00Z",
            "binaries": {"linux-amd64": entry, "linux-arm64": entry}}


def publish_manifest(srv: ReleaseServer, version: str, sha: str, size: int | None = None) -> None:
    """Serve a manifest naming the server's /bin/agent."""
    srv.publish("/version.json", Route(body=json.dumps(
        manifest(version, srv.url("/bin/agent"), sha, size)).encode()))


BAD_MANIFESTS = {
    "malformed JSON": (b'{"version": "0.1.1", "binaries": ',
                       "manifest: manifest is not valid JSON"),
    "missing fields": (b'{"version": "0.1.1"}', "'binaries': Field required"),
    "invalid version": (json.dumps(manifest("not-a-version", "http://x/a", "a" * 64)).encode(),
                        "is not a valid version"),
    "no platform entry": (json.dumps({"version": "0.1.1", "binaries": {
        "linux-s390x": {"url": "http://x/a", "sha256": "a" * 64}}}).encode(),
        "no binary for platform linux-amd64"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_check_refuses_bad_manifest_with_a_clear_error(case: str, tmp_path: Path) -> None:
    """``check`` against a broken manifest exits non-zero and names the problem."""
    body, expected = BAD_MANIFESTS[case]
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=body))
        out = run_cli("check", "--manifest-url", srv.url("/version.json"), "--allow-http",
                      "--state-dir", str(tmp_path / "none"), "--platform", "linux-amd64",
                      "--allow-unsigned")
    assert out.returncode == 1, out
    assert expected in out.stdout
    assert not (tmp_path / "none").exists(), "check must change nothing"


def test_check_on_empty_state_dir_reports_first_install(server: UpdateServer,
                                                        build: Callable[[str], Path],
                                                        tmp_path: Path) -> None:
    """``check`` with no state says what a first run would install, exit 0, no change."""
    server.publish("0.1.1", build("0.1.1"))
    out = run_cli("check", "--manifest-url", server.manifest_url, "--allow-http",
                  "--allow-unsigned", "--state-dir", str(tmp_path / "missing"))
    assert out.returncode == 0, out
    assert "would install 0.1.1" in out.stdout
    assert not (tmp_path / "missing").exists()


def test_plain_http_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    """Without --allow-http a plain http manifest URL is a configuration error naming https."""
    out = run_cli("run", "--manifest-url", "http://127.0.0.1:1/version.json",
                  "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2
    assert "https" in out.stderr and "--allow-http" in out.stderr


def test_bad_configuration_exits_2_with_what_to_fix(tmp_path: Path) -> None:
    """A bad value names the option and the problem."""
    out = run_cli("run", "--poll-interval", "-5", "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2
    assert "--poll-interval" in out.stderr and "greater than 0" in out.stderr


def start_with_seed(launcher: Callable[..., Launcher], seed: Path, url: str,
                    **over: str) -> Launcher:
    lch = launcher()
    fake = UpdateServer.__new__(UpdateServer)
    fake.manifest_url = url
    lch.start(*fast_args(fake, lch, **over), "--seed-binary", str(seed))
    lch.wait_healthy(seed_version(seed))
    return lch


def seed_version(path: Path) -> str:
    return subprocess.run([str(path), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def assert_untouched(lch: Launcher, version: str, error_word: str) -> dict[str, object]:
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith(error_word)
                        and s.get("consecutive_failures", 0) >= 2,
                        what=f"two failed checks with {error_word}")
    assert st["current"]["version"] == version
    assert st["bad"] == []
    assert st["phase"] == "committed"
    assert lch.health() is not None and lch.health()["version"] == version  # type: ignore[index]
    # A cut transfer leaves its partial for the next check to resume (launcher.partial).
    assert sorted(p.name for p in (lch.state_dir / "bin").iterdir()
                  if not p.name.startswith(".agent.partial-")) == ["agent"]
    return st


def test_server_down_keeps_agent_and_backs_off(launcher: Callable[..., Launcher],
                                               build: Callable[[str], Path]) -> None:
    """A dead server: transport error in status, growing delays, the agent keeps running."""
    url = f"http://127.0.0.1:{free_port()}/version.json"
    lch = start_with_seed(launcher, build("0.1.0"), url)
    st = assert_untouched(lch, "0.1.0", "transport")
    assert "connection refused" in st["last_error"]
    log = lch.wait_log("check failed \\(3 in a row\\)")
    assert "check failed (2 in a row)" in log
    assert lch.stop() == 0


def test_http_500_keeps_agent(launcher: Callable[..., Launcher],
                              build: Callable[[str], Path]) -> None:
    """A 500 from the server is a transport error; nothing changes."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(status=500, body=b"oops"))
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        st = assert_untouched(lch, "0.1.0", "transport")
        assert "HTTP 500" in st["last_error"]
        assert lch.stop() == 0


def test_malformed_manifest_through_the_launcher_then_recovery(
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """A broken manifest is an error; once fixed, the update goes through."""
    good = build("0.1.1").read_bytes()
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=b"{not json"))
        srv.publish("/bin/agent", Route(body=good))
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        assert_untouched(lch, "0.1.0", "manifest")
        sha = hashlib.sha256(good).hexdigest()
        publish_manifest(srv, "0.1.1", sha, len(good))
        lch.wait_healthy("0.1.1")
        assert lch.wait_state(lambda s: s["phase"] == "committed"
                              and s["current"]["version"] == "0.1.1")["last_error"] is None
        assert lch.stop() == 0


def test_wrong_checksum_is_refused_and_not_marked_bad(
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """A binary whose sha256 differs is discarded; the genuine one installs later."""
    good = build("0.1.1").read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    with ReleaseServer() as srv:
        srv.publish("/bin/agent", Route(body=good[:-1] + b"X"))
        publish_manifest(srv, "0.1.1", sha)
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        st = assert_untouched(lch, "0.1.0", "sha256")
        assert "sha256 mismatch" in st["last_error"]
        srv.publish("/bin/agent", Route(body=good))
        lch.wait_healthy("0.1.1")
        assert lch.stop() == 0


def test_truncated_download_is_refused(launcher: Callable[..., Launcher],
                                       build: Callable[[str], Path]) -> None:
    """A body cut short of its Content-Length never reaches bin/agent."""
    good = build("0.1.1").read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    with ReleaseServer() as srv:
        srv.publish("/bin/agent", Route(body=good[: len(good) // 2], behaviour="truncate",
                                        declared_length=len(good)))
        publish_manifest(srv, "0.1.1", sha, len(good))
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        st = assert_untouched(lch, "0.1.0", "download")
        assert "truncated" in st["last_error"] or "incomplete" in st["last_error"]
        assert lch.stop() == 0


def test_missing_binary_is_a_transport_error_not_a_bad_build(
        launcher: Callable[..., Launcher], build: Callable[[str], Path]) -> None:
    """A 404 for the binary fails the check but never marks the release bad."""
    good = build("0.1.1").read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    with ReleaseServer() as srv:
        publish_manifest(srv, "0.1.1", sha)
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        st = assert_untouched(lch, "0.1.0", "transport")
        assert "404" in st["last_error"]
        srv.publish("/bin/agent", Route(body=good))
        lch.wait_healthy("0.1.1")
        assert lch.state()["bad"] == []
        assert lch.stop() == 0


@pytest.mark.parametrize(("name", "body", "expected"), [
    ("wrong version", "#!/bin/sh\necho 9.9.9\n", "printed '9.9.9', expected '0.1.1'"),
    ("not executable", "this is not a program\n", "cannot run"),
])
def test_preflight_failure_is_refused_and_not_marked_bad(
        name: str, body: str, expected: str, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """A build that cannot even print its version is never swapped in, and is not 'bad'."""
    data = body.encode()
    with ReleaseServer() as srv:
        srv.publish("/bin/agent", Route(body=data))
        publish_manifest(srv, "0.1.1", hashlib.sha256(data).hexdigest(), len(data))
        lch = start_with_seed(launcher, build("0.1.0"), srv.url("/version.json"))
        st = assert_untouched(lch, "0.1.0", "preflight")
        assert expected in st["last_error"]
        assert lch.stop() == 0


def test_rollback_and_unblock_commands_on_a_live_launcher(
        server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """``rollback`` puts agent.old back and blocks the build; ``unblock`` lets it return."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch), "--seed-binary", str(build("0.1.0")))
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0, out
    assert "rolled back from 0.1.1 to 0.1.0" in out.stdout
    lch.wait_healthy("0.1.0")
    st = lch.state()
    assert [b["version"] for b in st["bad"]] == ["0.1.1"]
    assert "operator" in st["bad"][0]["reason"]
    out = run_cli("unblock", "0.1.1", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0 and "unblocked 1" in out.stdout
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0


def test_rollback_and_unblock_offline(launcher: Callable[..., Launcher],
                                      build: Callable[[str], Path],
                                      server: UpdateServer) -> None:
    """With no launcher running the commands edit the state dir under its lock."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch), "--seed-binary", str(build("0.1.0")))
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    assert lch.stop() == 0
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0, out
    agent = lch.state_dir / "bin" / "agent"
    assert seed_version(agent) == "0.1.0"
    assert not (lch.state_dir / "bin" / "agent.old").exists()
    again = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert again.returncode == 3 and "no agent.old" in again.stderr
    status = json.loads(run_cli("status", "--json", "--state-dir", str(lch.state_dir)).stdout)
    assert status["current_version"] == "0.1.0" and status["bad_versions"] == ["0.1.1"]
    assert status["launcher_pid"] is None
    out = run_cli("unblock", "0.1.1", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0
    status = json.loads(run_cli("status", "--json", "--state-dir", str(lch.state_dir)).stdout)
    assert status["bad_versions"] == []


def test_status_on_a_missing_state_dir(tmp_path: Path) -> None:
    """``status`` never fails for lack of state: it says nothing is installed."""
    out = run_cli("status", "--json", "--state-dir", str(tmp_path / "nothing"))
    assert out.returncode == 0
    assert json.loads(out.stdout)["phase"] == "empty"


def test_agent_that_cannot_start_is_restarted_not_fatal(launcher: Callable[..., Launcher],
                                                        tmp_path: Path) -> None:
    """A seed whose agent crashes is kept under backoff; the launcher stays up."""
    agent = script_agent(tmp_path / "a", "1.0.0", "exit 3")
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    lch.wait_log("restarting agent 1.0.0", count=2)
    assert lch.proc is not None and lch.proc.poll() is None
    assert lch.stop() == 0
