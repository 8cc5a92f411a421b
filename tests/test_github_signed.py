"""GitHub API mode with a public key: nothing that decides what is installed comes from the
unsigned API JSON, and an older signed release marked "latest" is a refused rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import release_tool
from conftest import ROOT, Launcher, https_args
from fake_github import FakeGitHub
from signing import Key, make_key


@pytest.fixture
def gh(ca: Any) -> Iterator[FakeGitHub]:
    with FakeGitHub(ca) as fake:
        yield fake


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return make_key(tmp_path / "keys", "release")


def assets(gh: FakeGitHub, tmp_path: Path, version: str, binary: Path, key: Key,
           tag: str | None = None, **kw: Any) -> dict[str, bytes]:
    out = tmp_path / f"assets-{version}-{tag}"
    release_tool.write_assets(version, out, binary=binary, sign_key=key.secret,
                              base_url=gh.web.url(f"/{gh.repo}/releases/download/"
                                                  f"{tag or 'v' + version}"), **kw)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def api_args(gh: FakeGitHub, ca_file: Path, key: Key) -> list[str]:
    return ["--github-repo", gh.repo, "--github-api-url", gh.api_url, "--ca-file",
            str(ca_file), "--platform", "linux-amd64", "--public-key", str(key.public)]


def test_with_a_key_the_api_json_decides_nothing(gh: FakeGitHub, ca_file: Path, key: Key,
                                                 build: Callable[[str], Path],
                                                 tmp_path: Path) -> None:
    """The API JSON lies (tag v9.9.9, an asset of other bytes with a digest of nothing): the
    version, URL and sha256 come from the signed version.json alone."""
    genuine = build("0.1.1")
    published = assets(gh, tmp_path, "0.1.1", genuine, key, tag="v9.9.9")
    signed = json.loads(published["version.json"])
    gh.add_release("v9.9.9", {**published, "agent-linux-amd64": b"not the signed build"},
                   digest_override={"agent-linux-amd64": "sha256:" + "0" * 64})
    out = subprocess.run([sys.executable, "-m", "launcher", "check", "--json",
                          *api_args(gh, ca_file, key), "--state-dir", str(tmp_path / "s")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 0, out
    result = json.loads(out.stdout)
    assert result["version"] == "0.1.1"
    assert result["sha256"] == signed["binaries"]["linux-amd64"]["sha256"]
    assert result["accepted"]["serial"] == signed["serial"]
    assert result["accepted"]["key"] == key.id_hex


def test_an_older_signed_release_marked_latest_is_refused(
        gh: FakeGitHub, ca_file: Path, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path) -> None:
    """Whoever can edit releases marks a withdrawn (older-serial) release as the latest."""
    withdrawn = assets(gh, tmp_path, "0.2.0", build("0.2.0"), key, serial=10)
    gh.add_release("v0.1.1", assets(gh, tmp_path, "0.1.1", build("0.1.1"), key, serial=20))
    lch = launcher()
    lch.start(*https_args(lch, *api_args(gh, ca_file, key)), "--seed-binary",
              str(build("0.1.0")))
    lch.wait_healthy("0.1.1")
    gh.add_release("v0.2.0", withdrawn)
    st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("rollback:"),
                        what="the replay refused")
    assert "manifest 0.2.0 has serial 10, below 20" in st["last_error"]
    assert st["current"]["version"] == "0.1.1" and st["bad"] == []
    assert (lch.health() or {}).get("version") == "0.1.1"
    assert lch.stop() == 0
