"""The release tool: versioned binaries first, then an atomically replaced manifest."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import release_tool  # noqa: E402 (packaging/ is not a package: found via the path above)

BASE = "http://updates.example:8090/"
WHEN = datetime(2026, 2, 10, 21, 0, 0, tzinfo=UTC)
PLATFORMS = ("linux-amd64", "linux-arm64")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_published(release_dir: Path, version: str) -> dict[str, Any]:
    """The manifest names binaries that exist, executable, with the hash and size given."""
    manifest: dict[str, Any] = json.loads((release_dir / "version.json").read_text())
    assert manifest["version"] == version
    assert set(manifest["binaries"]) == set(PLATFORMS)
    for platform in PLATFORMS:
        path = release_dir / "bin" / version / f"agent-{platform}"
        entry = manifest["binaries"][platform]
        assert entry["url"].endswith(f"/bin/{version}/agent-{platform}")
        assert entry["sha256"] == sha256(path)
        assert entry["size"] == path.stat().st_size
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    leftovers = [p for p in release_dir.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "temporary files left behind"
    return manifest


def test_publish_builds_the_agent(tmp_path: Path) -> None:
    """Without --binary the agent is built for the version; the manifest is the seed's + size."""
    manifest = release_tool.publish("0.1.2", tmp_path, BASE, release_date=WHEN)
    assert manifest == check_published(tmp_path, "0.1.2")
    assert manifest["release_date"] == "2026-02-10T21:00:00Z"
    assert manifest["binaries"]["linux-amd64"]["url"] == (
        "http://updates.example:8090/bin/0.1.2/agent-linux-amd64"
    )
    agent = tmp_path / "bin" / "0.1.2" / "agent-linux-amd64"
    done = subprocess.run([str(agent), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout == "0.1.2\n"


def test_publish_takes_any_binary_and_replaces_the_manifest(tmp_path: Path) -> None:
    """--binary publishes a file as is (a broken shell script too); a newer release replaces
    version.json in place, keeping the older versioned binaries."""
    release_tool.publish("0.1.2", tmp_path, BASE, release_date=WHEN)
    first_inode = (tmp_path / "version.json").stat().st_ino
    broken = tmp_path.parent / "broken.sh"
    broken.write_text("#!/bin/sh\nexit 1\n")
    manifest = release_tool.publish("0.1.3", tmp_path, BASE, binary=broken)
    check_published(tmp_path, "0.1.3")
    assert manifest["binaries"]["linux-arm64"]["sha256"] == sha256(broken)
    assert manifest["binaries"]["linux-arm64"]["size"] == len("#!/bin/sh\nexit 1\n")
    assert (tmp_path / "version.json").stat().st_ino != first_inode, "rewritten in place"
    assert (tmp_path / "bin" / "0.1.2" / "agent-linux-amd64").is_file()
    assert datetime.strptime(manifest["release_date"], "%Y-%m-%dT%H:%M:%SZ")


def test_binaries_are_written_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every binary is in place (renamed, final) before any manifest is written; the
    release's own (versions/9.0/, for ``install``) comes just before version.json."""
    seen: list[tuple[str, bool]] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        target = Path(dst)
        binaries = [tmp_path / "bin" / "9.0" / f"agent-{p}" for p in PLATFORMS]
        seen.append((str(target.relative_to(tmp_path)),
                     all(path.is_file() for path in binaries)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    script = tmp_path.parent / "fake-agent"
    script.write_text("#!/bin/sh\necho 9.0\n")
    release_tool.publish("9.0", tmp_path, BASE, binary=script)
    assert [name for name, _ in seen] == ["bin/9.0/agent-linux-amd64", "bin/9.0/agent-linux-arm64",
                                          "versions/9.0/version.json", "version.json"]
    assert seen[-1] == ("version.json", True)


def test_failed_binary_write_leaves_the_old_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that fails midway leaves the previous manifest and no temporary files."""
    release_tool.publish("0.1.2", tmp_path, BASE, release_date=WHEN)
    before = (tmp_path / "version.json").read_bytes()

    def fail(src: str | Path, dst: str | Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    script = tmp_path.parent / "agent.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(OSError, match="disk full"):
        release_tool.publish("0.1.3", tmp_path, BASE, binary=script)
    assert (tmp_path / "version.json").read_bytes() == before
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".")] == []


@pytest.mark.parametrize("version", ["0.1.2", "1.0rc1", "2.0.post1", "1!1.0.dev3", "10.20.30",
                                     "3.46.3+bea5943", "2.8.2+ds1", "1.0+ubuntu.1"])
def test_accepts_canonical_versions(version: str) -> None:
    assert release_tool.check_version(version) == version


@pytest.mark.parametrize("version", ["v1.0", "1.0-rc1", "01.0", "1.0+Local", "1.0+", "1.0+a..b",
                                     "1.0+a/b", "1.0+a_b", "", "../x", "1.0 "])
def test_rejects_other_versions(version: str) -> None:
    with pytest.raises(release_tool.ReleaseError, match="PEP 440"):
        release_tool.check_version(version)


def run_wrapper(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        [str(ROOT / "scripts" / "release-local.sh"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_wrapper_end_to_end(tmp_path: Path) -> None:
    """scripts/release-local.sh builds and publishes into ./release by default."""
    done = run_wrapper("0.2.0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = check_published(tmp_path / "release", "0.2.0")
    url = manifest["binaries"]["linux-amd64"]["url"]
    assert url == "http://127.0.0.1:8090/bin/0.2.0/agent-linux-amd64"
    assert f"sha256={sha256(tmp_path / 'release/bin/0.2.0/agent-linux-amd64')}" in done.stdout
    assert "version.json" in done.stdout


def test_wrapper_with_binary_and_options(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho 0.3.0\n")
    done = run_wrapper(
        "0.3.0",
        "--binary",
        str(script),
        "--release-dir",
        "out",
        "--base-url",
        "https://u.example",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    manifest = check_published(tmp_path / "out", "0.3.0")
    url = manifest["binaries"]["linux-arm64"]["url"]
    assert url == "https://u.example/bin/0.3.0/agent-linux-arm64"


def test_wrapper_usage_errors(tmp_path: Path) -> None:
    """A bad version or a missing --binary exits 2 with a message and publishes nothing."""
    bad = run_wrapper("v1.0", cwd=tmp_path)
    assert bad.returncode == 2
    assert "'v1.0' is not a canonical PEP 440" in bad.stderr
    missing = run_wrapper("1.0", "--binary", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "--binary nope: no such file" in missing.stderr
    assert not (tmp_path / "release").exists()
