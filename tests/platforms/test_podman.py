"""packaging/Dockerfile built by podman from a local base image and run as production runs
it: a named volume at the state dir, read-only root, a non-root user, --restart=always.

The container shares the host's network so that it reaches the signed update server on the
host's loopback; the agent's health port is a free one, passed as the agent's arguments.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import release_tool
import yaml
from conftest import ROOT, agent_health, free_port, script_agent, wait_until
from signing import Key, make_key

from platforms.conftest import need_tool
from platforms.podman import ULIMITS, base_image, build_image, died_codes, inspect, podman

pytestmark = pytest.mark.timeout(600)

SEED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GRACE_S = 30  # terminationGracePeriodSeconds of the shipped manifests


@pytest.fixture(scope="session")
def image(debian_rootfs: Path, wheels: Path) -> str:
    """The image, built once per session from the cached Debian root as its base."""
    need_tool("podman")
    need_tool("runc")
    assert wheels == ROOT / "dist" / "wheels" / wheels.name  # inside the build context
    return build_image(base_image(debian_rootfs), "localhost/nginx-manager-agent:platform-test",
                       SEED)


class Container:
    def __init__(self, name: str, health_port: int) -> None:
        self.name, self.health_port = name, health_port

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def health(self) -> dict[str, Any] | None:
        return agent_health(f"http://127.0.0.1:{self.health_port}/healthz")

    def wait_version(self, version: str, timeout: float = 90.0) -> dict[str, Any]:
        def answered() -> dict[str, Any] | None:
            h = self.health()
            return h if h and h.get("version") == version else None

        try:
            found: dict[str, Any] = wait_until(answered, timeout, f"agent {version}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()[-4000:]}") from None
        return found

    def wait_log(self, pattern: str, timeout: float = 90.0) -> None:
        try:
            wait_until(lambda: re.search(pattern, self.logs()), timeout, repr(pattern))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()[-4000:]}") from None

    def restarts(self) -> int:
        return int(inspect(self.name)["RestartCount"])

    def status(self) -> dict[str, Any]:
        out = podman("exec", self.name, "nginx-manager-launcher", "status", "--json").stdout
        data: dict[str, Any] = json.loads(out)
        return data


@pytest.fixture
def run_container(image: str, server: Any, tmp_path: Path) -> Iterator[
        Callable[[], tuple[Container, Key]]]:
    made: list[str] = []

    def start() -> tuple[Container, Key]:
        key = make_key(tmp_path / "keys", "release")
        name = f"nma-test-{tmp_path.name[-12:]}".lower().replace("_", "-")
        port = free_port()
        podman("volume", "rm", "-f", f"{name}-state", check=False)
        made.append(name)
        podman("run", "-d", "--name", name, "--network", "host", *ULIMITS, "--read-only",
               "--user", "10001:10001", "--restart=always",
               "-v", f"{name}-state:/var/lib/nginx-manager",
               "-v", f"{key.public.parent}:/keys:ro",
               "-e", f"NGINX_MANAGER_MANIFEST_URL={server.manifest_url}",
               "-e", "NGINX_MANAGER_ALLOW_HTTP=true",
               "-e", f"NGINX_MANAGER_PUBLIC_KEY=/keys/{key.public.name}",
               "-e", "NGINX_MANAGER_POLL_INTERVAL=1", "-e", "NGINX_MANAGER_JITTER=0",
               "-e", "NGINX_MANAGER_HEALTH_WINDOW=3", "-e", "NGINX_MANAGER_STOP_GRACE=5",
               "-e", f"NGINX_MANAGER_HEALTH_URL=http://127.0.0.1:{port}/healthz",
               image, "--", "run", "--health-addr", f"127.0.0.1:{port}")
        return Container(name, port), key

    yield start
    for name in made:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("volume", "rm", "-f", f"{name}-state", check=False)


def publish(server: Any, key: Key, version: str, binary: Path) -> None:
    release_tool.publish(version, server.dir, server.base_url, binary=binary,
                         sign_key=key.secret)


def test_update_exits_100_and_the_engine_restarts_it_on_the_new_build(
        run_container: Callable[[], tuple[Container, Key]], server: Any, build: Any,
        tmp_path: Path) -> None:
    """PID 1; exit 100 after the swap; --restart=always brings it back on the new build from
    the volume; a crashing build is then rolled back in place, with no second exit."""
    c, key = run_container()
    c.wait_version(SEED)
    state = inspect(c.name)
    assert state["Config"]["User"] == "10001:10001"
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert state["HostConfig"]["RestartPolicy"]["Name"] == "always"
    pid1 = podman("exec", c.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "/usr/local/bin/nginx-manager-launcher" in pid1 and "run" in pid1
    version = podman("exec", c.name, "nginx-manager-launcher", "--version").stdout.strip()
    assert version == SEED  # the same launcher version as the Debian package
    host_pid = int(state["State"]["Pid"])
    assert "nginx-manager-launcher" in " ".join(psutil.Process(host_pid).cmdline())

    publish(server, key, "0.2.0", build("0.2.0"))
    wait_until(lambda: c.restarts() == 1, 90, "the engine's restart")
    c.wait_version("0.2.0")
    assert died_codes(c.name) == [100]
    assert "exiting 100" in c.logs()
    wait_until(lambda: c.status()["phase"] == "committed", 60, "0.2.0 committed")
    assert c.status()["current_version"] == "0.2.0"

    bad = script_agent(tmp_path / "agent-0.3.0", "0.3.0", "echo crashing >&2\nexit 3")
    publish(server, key, "0.3.0", bad)
    c.wait_log(r"rolled back to 0\.2\.0")
    c.wait_version("0.2.0")
    assert c.status()["bad_versions"] == ["0.3.0"]
    # One exit for the swap to 0.3.0; the rollback itself happened in place.
    assert died_codes(c.name) == [100, 100]
    assert c.restarts() == 2
    time.sleep(3)  # a second exit would come within a poll or two
    assert died_codes(c.name) == [100, 100]
    assert inspect(c.name)["State"]["Running"] is True


def test_podman_stop_ends_it_within_the_grace_period(
        run_container: Callable[[], tuple[Container, Key]]) -> None:
    """SIGTERM to PID 1: the launcher stops the agent and exits 0, well inside the grace."""
    c, _ = run_container()
    c.wait_version(SEED)
    began = time.monotonic()
    podman("stop", "-t", str(GRACE_S), c.name, timeout=GRACE_S + 30)
    took = time.monotonic() - began
    assert took < GRACE_S - 10
    state = inspect(c.name)["State"]
    assert state["Running"] is False
    assert state["ExitCode"] == 0  # not 137: nothing was SIGKILLed
    assert died_codes(c.name)[-1] == 0
    assert "agent" in c.logs() and "stopping on SIGTERM" in c.logs()


def kube_manifest(image: str, tmp_path: Path) -> tuple[Path, Path]:
    """The shipped deployment with the image swapped, and the ConfigMap an operator creates
    with the release's public key (``kubectl create configmap ... --from-file``)."""
    (doc,) = [d for d in yaml.safe_load_all((ROOT / "packaging" / "k8s" / "deployment.yaml")
                                            .read_text()) if d]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("ghcr.io/")
    container["image"] = image
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc))
    (volume,) = [v for v in doc["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    key = make_key(tmp_path / "keys", "release")
    configmap = tmp_path / "release-key.yaml"
    configmap.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": volume["configMap"]["name"]},
        "data": {"release.pub": key.public.read_text()}}))
    return path, configmap


def test_kube_play_runs_the_shipped_deployment(image: str, tmp_path: Path) -> None:
    """podman kube play of packaging/k8s/deployment.yaml, only the image swapped: the pod
    runs the launcher as PID 1 with the manifest's user, read-only root, dropped
    capabilities, memory limit and state volume, and the seeded agent answers /healthz."""
    path, configmap = kube_manifest(image, tmp_path)
    podman("kube", "down", str(path), check=False)
    try:
        podman("kube", "play", "--configmap", str(configmap), str(path), timeout=300)
        names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        names = [n for n in names
                 if n.startswith("nginx-manager-agent-pod-") and n.endswith("-agent")]
        assert len(names) == 1, names
        name = names[0]

        def answered() -> bool:
            out = podman("exec", name, "python3", "-c",
                         "import urllib.request as u;print(u.urlopen("
                         "'http://127.0.0.1:8091/healthz',timeout=1).read().decode())",
                         check=False)
            return out.returncode == 0 and f'"version": "{SEED}"' in out.stdout

        wait_until(answered, 90, "the pod's agent")
        state = inspect(name)
        host = state["HostConfig"]
        assert state["Config"]["User"].split(":")[0] == "10001"
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 128 * 1024 * 1024
        assert (host["CpuQuota"], host["CpuPeriod"]) == (20000, 100000)  # 200m
        assert "CAP_NET_RAW" not in (state.get("EffectiveCaps") or [])
        assert not state.get("EffectiveCaps")
        mounts = {m["Destination"]: m for m in state["Mounts"]}
        assert "/var/lib/nginx-manager" in mounts
        pid1 = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert "/usr/local/bin/nginx-manager-launcher" in pid1
    finally:
        podman("kube", "down", str(path), check=False)
