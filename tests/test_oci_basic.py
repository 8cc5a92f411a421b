"""A real registry that asks for Basic auth (``auth: htpasswd``, bcrypt), over TLS."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import release_tool
from conftest import run_cli
from oci_registry import RegistryProcess, docker_config, htpasswd_auth
from signing import Key, make_key

USER, PASSWORD = "bob", "builder"


@pytest.fixture(scope="module")
def registry(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    directory = tmp_path_factory.mktemp("basic")
    with RegistryProcess(directory, ca, auth=htpasswd_auth(directory, USER, PASSWORD)) as server:
        yield server


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def check(url: str, tmp_path: Path, ca_file: Path, key: Key,
          *extra: str) -> tuple[int, dict[str, Any]]:
    out = run_cli("check", "--json", "--manifest-url", url, "--ca-file", str(ca_file),
                  "--public-key", str(key.public), "--state-dir", str(tmp_path / "state"),
                  "--platform", "linux-amd64", *extra)
    result: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, result


def test_basic_auth_push_and_pull_and_refusals(registry: RegistryProcess, key: Key,
                                               ca_file: Path, tmp_path: Path,
                                               build: Callable[[str], Path]) -> None:
    """With the user's password the release tool pushes and a check finds the release;
    without credentials or with a wrong password the error says what to fix."""
    url = f"oci://{registry.host}/agent:stable"
    good = docker_config(tmp_path / "good.json", registry.host, USER, PASSWORD)
    release_tool.publish_oci("0.1.1", push_urls=(url,), binary=build("0.1.1"),
                             sign_key=key.secret, credentials=good, ca_file=ca_file,
                             log=lambda _: None)
    code, result = check(url, tmp_path, ca_file, key, "--registry-credentials", str(good))
    assert code == 0 and result["outcome"] == "install" and result["version"] == "0.1.1"

    code, result = check(url, tmp_path, ca_file, key)
    assert code == 1
    assert result["error"] == (
        f"transport: registry {registry.host} asks for a user and password (HTTP 401 Basic) "
        f"for https://{registry.host}/v2/agent/manifests/stable: give --registry-credentials "
        f"with an entry for {registry.host}")

    wrong = docker_config(tmp_path / "wrong.json", registry.host, USER, "not-it")
    code, result = check(url, tmp_path, ca_file, key, "--registry-credentials", str(wrong))
    assert code == 1
    assert result["error"] == (
        f"transport: registry {registry.host} refused user {USER} for "
        f"https://{registry.host}/v2/agent/manifests/stable (HTTP 401)")


def test_the_pushed_serial_only_grows(registry: RegistryProcess, key: Key, ca_file: Path,
                                      tmp_path: Path, build: Callable[[str], Path]) -> None:
    """The release tool reads the serial the tag names now: the next push is above it, and
    a --serial at or below it is refused before anything is pushed."""
    url = f"oci://{registry.host}/serials:stable"
    good = docker_config(tmp_path / "good.json", registry.host, USER, PASSWORD)

    def publish(version: str, serial: int | None = None) -> dict[str, Any]:
        return release_tool.publish_oci(version, push_urls=(url,), binary=build(version),
                                        sign_key=key.secret, credentials=good,
                                        ca_file=ca_file, serial=serial, log=lambda _: None)

    first = publish("0.1.1", serial=4_000_000_000)
    assert publish("0.1.2")["serial"] == first["serial"] + 1
    with pytest.raises(release_tool.ReleaseError, match="not above the published serial"):
        publish("0.1.3", serial=5)
    code, result = check(url, tmp_path, ca_file, key, "--registry-credentials", str(good))
    assert code == 0 and result["version"] == "0.1.2"
