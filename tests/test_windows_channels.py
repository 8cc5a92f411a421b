"""Maintenance windows and channels through real launchers, and ``install``'s serial rule
in the worker against a real release directory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import channels
import pytest
import release_tool
from conftest import ROOT, Launcher, UpdateServer, fast_args, run_cli
from signing import Key, make_key

from launcher import worker
from launcher.journal import utc_iso
from launcher.settings import Settings
from launcher.signature import load_public_key, verify

ZONE = "Asia/Kolkata"  # UTC+05:30: a zone that is not UTC, without clock changes


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def status(state_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("status", "--json", "--state-dir",
                                              str(state_dir)).stdout)
    return data


def window_from(start: float, length_s: float) -> str:
    local = [datetime.fromtimestamp(t, ZoneInfo(ZONE)) for t in (start, start + length_s)]
    return f"* {local[0]:%H:%M:%S}-{local[1]:%H:%M:%S} {ZONE}"


def test_the_swap_waits_for_the_window_and_happens_at_its_start(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Outside the window the build is downloaded, verified and staged; a power loss
    meanwhile keeps it; the resident wakes at the window's start (the next poll is minutes
    away) and swaps it in, without downloading it again."""
    release_tool.publish("0.1.1", server.dir, server.base_url, binary=build("0.1.1"),
                         sign_key=key.secret)
    later = float(int(time.time()) + 3600)
    first = launcher()

    def args(opens: float) -> list[str]:
        return [*fast_args(server, first, key.public, **{"--poll-interval": "300"}),
                "--seed-binary", str(build("0.1.0")), "--window", window_from(opens, 120)]

    first.start(*args(later))
    st = first.wait_state(lambda s: (s.get("extra", {}).get("waiting") or {}).get("version")
                          == "0.1.1", what="0.1.1 staged, waiting")
    assert (first.state_dir / "bin" / "agent.next").is_file()
    assert st["current"]["version"] == "0.1.0" and first.health()["version"] == "0.1.0"  # type: ignore[index]
    shown = status(first.state_dir)
    assert shown["next_window"] == utc_iso(later) and shown["waiting"] == "0.1.1"
    first.kill_tree()  # power loss while it waits
    # The window is set from here, so that a loaded machine's slow first half cannot have
    # opened it already: the operator moved tonight's window to ten seconds from now.
    opens = float(int(time.time()) + 10)
    lch = launcher(first.state_dir).start(*args(opens))
    lch.wait_log("is staged already, waiting for a maintenance window")
    assert time.time() < opens, "too slow to observe the wait; the window already opened"
    lch.wait_healthy("0.1.1", timeout=40)
    assert time.time() >= opens
    line = re.search(r"(\S+)Z launcher INFO maintenance window open", lch.log())
    assert line, lch.log()
    swapped = datetime.fromisoformat(line.group(1) + "+00:00").timestamp()
    assert opens <= swapped < opens + 10, (opens, swapped)
    assert not (lch.state_dir / "bin" / "agent.next").exists()
    assert "Update found: 0.1.1" in first.log() and "Update found" not in lch.log()
    assert lch.stop() == 0


def test_a_hold_wins_over_an_open_window(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    release_tool.publish("0.1.1", server.dir, server.base_url, binary=build("0.1.1"),
                         sign_key=key.secret)
    lch = launcher()
    lch.state_dir.mkdir(mode=0o700)
    assert run_cli("hold", "--state-dir", str(lch.state_dir)).returncode == 0
    lch.start(*fast_args(server, lch, key.public), "--seed-binary", str(build("0.1.0")),
              "--window", window_from(time.time() - 60, 3600))
    lch.wait_state(lambda s: s.get("extra", {}).get("available") == "0.1.1",
                   what="0.1.1 available, not taken")
    assert lch.health()["version"] == "0.1.0"  # type: ignore[index]
    assert not (lch.state_dir / "bin" / "agent.next").exists()
    assert lch.stop() == 0


def test_a_host_follows_its_channel_and_a_promotion_reaches_stable(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path) -> None:
    """0.1.1 is published on beta only: a beta host takes it from channels/beta/; stable
    does not see it until ``promote`` re-issues it there, same binaries, signed for stable."""
    release_tool.publish("0.1.0", server.dir, server.base_url, binary=build("0.1.0"),
                         sign_key=key.secret)
    beta = release_tool.publish("0.1.1", server.dir, server.base_url, binary=build("0.1.1"),
                                sign_key=key.secret, channel="beta")
    assert (server.dir / "channels" / "beta" / "version.json").is_file()
    assert json.loads((server.dir / "version.json").read_text())["version"] == "0.1.0"
    lch = launcher()
    lch.start(*fast_args(server, lch, key.public), "--seed-binary", str(build("0.1.0")),
              "--channel", "beta")
    lch.wait_healthy("0.1.1")
    assert status(lch.state_dir)["channel"] == "beta"
    assert stable_check(server, tmp_path, key).reason == "0.1.0 is not newer than 0.1.0"
    out = subprocess.run([sys.executable, str(ROOT / "packaging" / "release_tool.py"),
                          "promote", "0.1.1", "--from", "beta", "--to", "stable",
                          "--release-dir", str(server.dir), "--sign-key", str(key.secret)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out
    body = (server.dir / "version.json").read_bytes()
    stable = json.loads(body)
    assert stable["channel"] == "stable" and stable["binaries"] == beta["binaries"]
    assert stable["serial"] > beta["serial"]
    verify(body, (server.dir / "version.json.minisig").read_bytes(),
           [load_public_key(key.public)])
    assert stable_check(server, tmp_path, key).outcome == "update"
    assert lch.stop() == 0


def stable_check(server: UpdateServer, tmp_path: Path, key: Key) -> worker.Result:
    s = Settings(manifest_url=server.manifest_url, platform="linux-amd64", allow_http=True,
                 state_dir=tmp_path / "other", public_keys=(key.public,))
    return worker.run_check({"settings": s.for_worker(), "current": {"version": "0.1.0",
                             "sha256": "0" * 64}, "bad": [], "host_id": "h", "stage": False})


def install_check(release: Path, key: Key, tmp_path: Path, version: str,
                  **request: Any) -> worker.Result:
    s = Settings(manifest_url=(release / "version.json").as_uri(), platform="linux-amd64",
                 state_dir=tmp_path / "state", public_keys=(key.public,))
    (tmp_path / "state").mkdir(exist_ok=True)
    return worker.run_check({"settings": s.for_worker(), "current": None, "bad": [],
                             "host_id": "h", "stage": True, "install": version, **request})


def test_install_takes_an_older_serial_only_on_its_own_path(
        key: Key, tmp_path: Path, build: Callable[[str], Path]) -> None:
    """The release's own manifest may be below the floor on ``install``; replayed at the
    main path it is still a rollback; an unsigned, mislabelled or bad one is refused."""
    release = tmp_path / "release"
    base = release.as_uri()
    old = release_tool.publish("0.1.0", release, base, binary=build("0.1.0"),
                               sign_key=key.secret)
    new = release_tool.publish("0.1.1", release, base, binary=build("0.1.1"),
                               sign_key=key.secret)
    trust = {"serials": {key.id_hex: new["serial"]}}
    staged = install_check(release, key, tmp_path, "0.1.0", trust=trust)
    assert (staged.outcome, staged.version, staged.install) == ("staged", "0.1.0", "0.1.0")
    assert staged.accepted is None  # the floor is not touched
    (tmp_path / "state" / "bin" / str(staged.file)).unlink()
    for name in ("version.json", "version.json.minisig"):  # the old release, replayed
        shutil.copy(release / "versions" / "0.1.0" / name, release / name)
    replay = stable_check_local(release, key, tmp_path, trust)
    assert replay.error_kind == "rollback" and str(old["serial"]) in str(replay.error)
    bad = install_check(release, key, tmp_path, "0.1.0", trust=trust,
                        bad=[["0.1.0", old["binaries"]["linux-amd64"]["sha256"]]])
    assert bad.error_kind == "blocked" and "unblock 0.1.0" in str(bad.error)
    shutil.copy(release / "versions" / "0.1.1" / "version.json",
                release / "versions" / "0.1.0" / "version.json")
    shutil.copy(release / "versions" / "0.1.1" / "version.json.minisig",
                release / "versions" / "0.1.0" / "version.json.minisig")
    mislabelled = install_check(release, key, tmp_path, "0.1.0", trust=trust)
    assert mislabelled.error_kind == "manifest" and "signed for version 0.1.1" in \
        str(mislabelled.error)
    (release / "versions" / "0.1.0" / "version.json.minisig").unlink()
    unsigned = install_check(release, key, tmp_path, "0.1.0", trust=trust)
    assert unsigned.error_kind == "signature"
    assert install_check(release, key, tmp_path, "9.9.9").error_kind == "transport"
    assert not list((tmp_path / "state" / "bin").iterdir())


def stable_check_local(release: Path, key: Key, tmp_path: Path,
                       trust: dict[str, Any]) -> worker.Result:
    s = Settings(manifest_url=(release / "version.json").as_uri(), platform="linux-amd64",
                 state_dir=tmp_path / "state", public_keys=(key.public,))
    return worker.run_check({"settings": s.for_worker(), "current": None, "bad": [],
                             "host_id": "h", "stage": False, "trust": trust})


def test_release_tool_refuses_promoting_what_a_channel_does_not_serve(
        key: Key, tmp_path: Path) -> None:
    script = tmp_path / "agent"
    script.write_text("#!/bin/sh\necho 0.2.0\n")
    release_tool.publish("0.2.0", tmp_path / "rel", "http://x", binary=script, channel="beta")
    with pytest.raises(release_tool.ReleaseError, match="channel edge serves nothing"):
        channels.promote("0.2.0", tmp_path / "rel", "stable", sign_key=None,
                             from_channel="edge")
    with pytest.raises(release_tool.ReleaseError, match=r"no release 0\.3\.0"):
        channels.promote("0.3.0", tmp_path / "rel", "stable", sign_key=None)
    promoted = channels.promote("0.2.0", tmp_path / "rel", "stable", sign_key=None,
                                    expires_in_days=1)
    expires = datetime.fromisoformat(promoted["expires"])
    assert expires - datetime.now(expires.tzinfo) <= timedelta(days=1)
    assert not (tmp_path / "rel" / "version.json.minisig").exists()
