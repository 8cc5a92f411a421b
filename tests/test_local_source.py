"""A local release directory (``file://``) and a config file, both watched: a change takes
effect at once, not at the next poll, and without restarting the agent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import Launcher, release_tool, wait_until
from release_server import ReleaseServer, Route


def publish(release: Path, version: str, binary: Path) -> None:
    release_tool.publish(version, release, release.resolve().as_uri(), binary=binary)


def test_file_manifest_change_triggers_a_check_at_once(
        launcher: Callable[..., Launcher], build: Callable[[str], Path], tmp_path: Path) -> None:
    """With a 10-minute poll interval, publishing into the watched directory updates now."""
    release = tmp_path / "release"
    publish(release, "0.1.0", build("0.1.0"))
    lch = launcher()
    lch.start("--manifest-url", (release / "version.json").as_uri(), "--allow-unsigned",
              "--poll-interval", "600",
              "--jitter", "0", "--health-window", "1", "--health-url", lch.health_url)
    lch.wait_healthy("0.1.0")
    lch.wait_log("next check in 600")
    publish(release, "0.1.1", build("0.1.1"))
    lch.wait_log("version.json changed: checking now")
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0


def test_config_file_change_applies_without_restarting_the_agent(
        launcher: Callable[..., Launcher], build: Callable[[str], Path], tmp_path: Path) -> None:
    """Editing the config file switches the manifest URL and the poll interval live."""
    first, second = tmp_path / "first", tmp_path / "second"
    publish(first, "0.1.0", build("0.1.0"))
    publish(second, "0.1.1", build("0.1.1"))
    config = tmp_path / "launcher.toml"
    lch = launcher()

    def write_config(release: Path, poll: int) -> None:
        config.write_text(f'manifest_url = "{(release / "version.json").as_uri()}"\n'
                          f"poll_interval = {poll}\njitter = 0\nhealth_window = 1\n"
                          "allow_unsigned = true\n"
                          f'health_url = "{lch.health_url}"\n')

    write_config(first, 600)
    lch.start("--config", str(config))
    lch.wait_healthy("0.1.0")
    agent_pid = lch.state()["child"]["pid"]
    write_config(first, 900)
    lch.wait_log("config reloaded: poll_interval_s changed")
    lch.wait_log("next check in 900")
    assert lch.state()["child"]["pid"] == agent_pid, "a reload does not restart the agent"
    write_config(second, 900)
    lch.wait_log("config reloaded: manifest_url changed")
    lch.wait_healthy("0.1.1")
    config.write_text("poll_interval = -1\n")
    lch.wait_log("config reload refused")
    assert lch.proc is not None and lch.proc.poll() is None
    assert lch.stop() == 0


def test_remote_manifest_may_not_name_a_local_file(
        launcher: Callable[..., Launcher], build: Callable[[str], Path], tmp_path: Path) -> None:
    """file:// binaries are for local release directories only."""
    target = build("0.1.1")
    import hashlib

    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    body = json.dumps({"version": "0.1.1", "binaries": {
        p: {"url": target.as_uri(), "sha256": sha} for p in ("linux-amd64", "linux-arm64")}})
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=body.encode()))
        lch = launcher()
        lch.start("--manifest-url", srv.url("/version.json"), "--allow-http",
                  "--allow-unsigned", "--jitter", "0",
                  "--poll-interval", "0.3", "--seed-binary", str(build("0.1.0")))
        st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("https:"))
        assert "local file URL" in st["last_error"]
        wait_until(lambda: lch.health() is not None, 10, "agent up")
        assert lch.state()["current"]["version"] == "0.1.0"
        assert lch.stop() == 0


def test_a_fifo_in_place_of_a_release_file_is_refused_without_blocking(
        build: Callable[[str], Path], tmp_path: Path) -> None:
    """A FIFO where the manifest, its signature or the build should be would block a plain
    ``open`` until the worker's deadline: each is refused at once with a clear error."""
    import os
    import time

    import pytest

    from launcher.download import copy_local
    from launcher.errors import SignatureError, TransportError
    from launcher.sources.local import LocalSource

    release = tmp_path / "release"
    publish(release, "0.1.0", build("0.1.0"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(TransportError, match="not a regular file"):
        LocalSource(fifo).fetch(None)
    os.mkfifo(tmp_path / "m.json.minisig")
    with pytest.raises((TransportError, SignatureError), match="not a regular file"):
        LocalSource(tmp_path / "m.json").fetch_signature(4096)
    with pytest.raises(TransportError, match="not a regular file"):
        copy_local(fifo, tmp_path, expected_sha256="0" * 64, expected_size=10)
    assert time.monotonic() - started < 2.0
    assert LocalSource(release / "version.json").fetch(None).body  # a real file still reads
