"""Rollout visibility: the host id and its cohort in ``status``; admission only ever grows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from release_server import ReleaseServer, Route

from launcher import policy

SHA = "ab" * 32


def host_with_cohort(version: str, low: float, high: float) -> str:
    """A host id whose cohort for ``version`` lies in ``[low, high)``."""
    return next(h for h in (f"host-{n}" for n in range(10_000))
                if low <= policy.cohort(h, version) < high)


def state_dir(tmp_path: Path, host_id: str, **extra: Any) -> Path:
    """A minimal valid journal: 0.1.0 installed and committed on a known host id."""
    path = tmp_path / host_id
    path.mkdir()
    journal = {"schema": 1, "host_id": host_id, "phase": "committed",
               "current": {"version": "0.1.0", "sha256": SHA}, **extra}
    (path / "state.json").write_text(json.dumps(journal))
    return path


@pytest.fixture
def server() -> Iterator[ReleaseServer]:
    with ReleaseServer() as running:
        yield running


def publish(server: ReleaseServer, percent: float) -> None:
    data = b"agent 0.1.1"
    entry = {"url": server.url("/bin/agent"), "sha256": hashlib.sha256(data).hexdigest()}
    server.publish("/version.json", Route(body=json.dumps({
        "version": "0.1.1", "rollout": {"percent": percent},
        "binaries": {"linux-amd64": entry, "linux-arm64": entry}}).encode()))


def check(server: ReleaseServer, state: Path) -> dict[str, Any]:
    out = run_cli("check", "--json", "--manifest-url", server.url("/version.json"),
                  "--allow-http", "--allow-unsigned", "--state-dir", str(state),
                  "--platform", "linux-amd64")
    assert out.returncode == 0, out
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_host_admitted_at_10_percent_stays_admitted_at_20(server: ReleaseServer,
                                                           tmp_path: Path) -> None:
    """Raising the percent only adds hosts: cohort 0-10 in at both, 10-20 only at 20."""
    early = state_dir(tmp_path, host_with_cohort("0.1.1", 0, 10))
    late = state_dir(tmp_path, host_with_cohort("0.1.1", 10, 20))
    results = {}
    for percent in (10, 20):
        publish(server, percent)
        for name, state in (("early", early), ("late", late)):
            results[name, percent] = check(server, state)
            assert results[name, percent]["cohort"] == policy.cohort(state.name, "0.1.1")
    assert {k: r["outcome"] for k, r in results.items()} == {
        ("early", 10): "update", ("late", 10): "none",
        ("early", 20): "update", ("late", 20): "update"}
    assert "rollout at 10% does not include this host" in results["late", 10]["reason"]


def test_status_shows_host_id_and_cohort_of_the_newest_version(tmp_path: Path) -> None:
    """The newest version the journal knows (here a bad 0.1.1) gives the cohort shown."""
    host = "5d0c51e4-host"
    state = state_dir(tmp_path, host, bad=[{"version": "0.1.1", "sha256": SHA,
                                            "reason": "crashed", "at": "2026-02-10T21:00:00Z"}])
    out = run_cli("status", "--json", "--state-dir", str(state))
    assert out.returncode == 0, out
    status = json.loads(out.stdout)
    assert status["host_id"] == host
    assert status["cohort_version"] == "0.1.1"
    assert status["cohort"] == policy.cohort(host, "0.1.1")
    text = run_cli("status", "--state-dir", str(state)).stdout
    assert f"host id:     {host}" in text
    assert f"cohort:      {policy.cohort(host, '0.1.1'):.3f} for 0.1.1" in text


def test_status_without_state_has_no_cohort(tmp_path: Path) -> None:
    status = json.loads(run_cli("status", "--json", "--state-dir", str(tmp_path / "x")).stdout)
    assert status["host_id"] is None and status["cohort"] is None
