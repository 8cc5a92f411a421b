"""``release_tool.py --assets-dir``: the asset set of a GitHub release, signed or not."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import release_tool  # packaging/, on sys.path through conftest
from conftest import ROOT
from signing import make_key

from launcher import signature


def test_assets_for_a_github_release(tmp_path: Path) -> None:
    """Binaries, version.json with github.com download URLs, SHA256SUMS; no stale .minisig."""
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\necho 1.2.0\n")
    out = tmp_path / "assets"
    out.mkdir()
    (out / "version.json.minisig").write_text("stale")
    manifest = release_tool.write_assets("1.2.0", out, github_repo="acme/agent", binary=agent)
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "agent-linux-amd64", "agent-linux-arm64", "version.json"]
    assert json.loads((out / "version.json").read_text()) == manifest
    sha = hashlib.sha256(agent.read_bytes()).hexdigest()
    for platform in ("linux-amd64", "linux-arm64"):
        assert manifest["binaries"][platform] == {
            "url": f"https://github.com/acme/agent/releases/download/v1.2.0/agent-{platform}",
            "sha256": sha, "size": agent.stat().st_size}
        assert os.access(out / f"agent-{platform}", os.X_OK)
    sums = (out / "SHA256SUMS").read_text().splitlines()
    # One line per asset in name order, as the tool writes them (not in hash order: that
    # would depend on this run's hashes).
    assert sums == [f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}"
                    for n in ("agent-linux-amd64", "agent-linux-arm64", "version.json")]
    done = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_signed_assets_verify(tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "release")
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\necho 1.2.0\n")
    out = tmp_path / "assets"
    release_tool.write_assets("1.2.0", out, github_repo="acme/agent", binary=agent,
                              sign_key=key.secret)
    body = (out / "version.json").read_bytes()
    signature.verify(body, (out / "version.json.minisig").read_bytes(),
                     [signature.load_public_key(key.public)])


def test_command_line(tmp_path: Path) -> None:
    agent = tmp_path / "agent.sh"
    agent.write_text("#!/bin/sh\necho 1.2.0\n")
    tool = [sys.executable, str(ROOT / "packaging" / "release_tool.py")]
    done = subprocess.run([*tool, "1.2.0", "--binary", str(agent), "--assets-dir",
                           str(tmp_path / "a"), "--github-repo", "acme/agent"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "SHA256SUMS, agent-linux-amd64, agent-linux-arm64, version.json" in done.stdout
    assert not (tmp_path / "release").exists(), "--assets-dir publishes nothing else"
    bad = subprocess.run([*tool, "1.2.0", "--binary", str(agent), "--assets-dir",
                          str(tmp_path / "b"), "--github-repo", "no-slash"],
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert bad.returncode == 2 and "OWNER/NAME" in bad.stderr
