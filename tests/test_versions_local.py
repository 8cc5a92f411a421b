"""Versions with build metadata (PEP 440's local part), as native builds print them, end to
end: a real program's --version, the release tool, the manifest, the order, a launcher."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import release_tool
from conftest import Launcher, run_cli, unavailable
from hostile import agent_pid, manifest_for, quick_args, sleeper, start
from release_server import ReleaseServer, Route

from launcher import policy
from launcher.errors import PreflightError
from launcher.manifest import parse_manifest
from launcher.preflight import preflight


def test_a_real_programs_version_output_passes_the_preflight() -> None:
    """Debian's docker-registry prints 'docker-registry github.com/docker/distribution
    2.8.2+ds1': a Go build's version with its metadata, as the release names it."""
    found = shutil.which("docker-registry")
    if found is None:
        unavailable("docker-registry is not installed")
        return
    preflight(Path(found), "2.8.2+ds1")
    with pytest.raises(PreflightError, match=re.escape("expected '2.8.2'")):
        preflight(Path(found), "2.8.2")  # the build metadata is part of the name


def decide(candidate: str, current: str) -> str:
    return policy.decide(candidate, current, bad=[], candidate_sha256="a" * 64, cohort=1.0,
                         rollout_percent=None).action


def test_the_order_is_the_public_versions() -> None:
    assert decide("3.46.4+c0ffee1", "3.46.3+bea5943") == "update"
    assert decide("3.46.4", "3.46.3+bea5943") == "update"
    # Another build of the same release is not an update, whichever hash sorts higher.
    assert decide("3.46.3+ffff", "3.46.3+bea5943") == "none"
    assert decide("3.46.3+0000", "3.46.3+bea5943") == "none"
    assert decide("3.46.3", "3.46.3+bea5943") == "none"
    assert decide("3.46.2+ffff", "3.46.3+bea5943") == "none"


def test_the_release_tool_publishes_them(tmp_path: Path) -> None:
    agent = sleeper(tmp_path, "3.46.3+bea5943")
    release = tmp_path / "release"
    code = release_tool.main(["3.46.3+bea5943", "--binary", str(agent), "--release-dir",
                              str(release)])
    assert code == 0
    manifest = parse_manifest((release / "version.json").read_bytes())
    assert manifest.version == "3.46.3+bea5943"
    url = manifest.binaries["linux-amd64"].url
    assert url.endswith("/bin/3.46.3+bea5943/agent-linux-amd64")
    assert (release / "bin" / "3.46.3+bea5943" / "agent-linux-amd64").is_file()


def test_a_launcher_installs_updates_and_reports_them(launcher: Callable[..., Launcher],
                                                      tmp_path: Path) -> None:
    first = sleeper(tmp_path, "3.46.3+bea5943")
    newer = sleeper(tmp_path, "3.46.4+c0ffee1").read_bytes()
    rebuild = sleeper(tmp_path, "3.46.4+d00d").read_bytes()
    with ReleaseServer() as srv:
        url = srv.url("/bin/agent")
        srv.publish("/version.json", Route(body=manifest_for("3.46.4+c0ffee1", url, newer)))
        srv.publish("/bin/agent", Route(body=newer))
        lch = launcher()
        start(lch, quick_args(srv.url("/version.json"), first), "3.46.3+bea5943")
        agent_pid(lch, "3.46.4+c0ffee1")
        srv.publish("/version.json", Route(body=manifest_for("3.46.4+d00d", url, rebuild)))
        srv.publish("/bin/agent", Route(body=rebuild))
        lch.wait_log(r"no update: 3\.46\.4\+d00d is not newer than 3\.46\.4\+c0ffee1")
        out = run_cli("status", "--json", "--state-dir", str(lch.state_dir))
        status = json.loads(out.stdout)
        assert status["current_version"] == "3.46.4+c0ffee1"
        assert status["previous_version"] == "3.46.3+bea5943"
        assert lch.stop() == 0
