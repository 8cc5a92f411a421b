"""podman as this machine can run it, and the images the platform suite builds with it.

Global flags from shared/research/platforms.md: the vfs storage driver, runc (crun fails on
this kernel's hybrid cgroups) and cgroupfs (no systemd here). rlimits at or below ours (no
CAP_SYS_RESOURCE). No registry is reachable, so the base image is the cached debootstrap
root, imported once and kept in podman's storage under a name keyed by the root's hash.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import ROOT

PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager",
          "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
CONF = Path(__file__).resolve().parent / "containers.conf"


def podman(*args: str, check: bool = True, timeout: float = 600.0,
           input_bytes: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, timeout=timeout,
                            check=False, input=input_bytes,
                            env={**os.environ, "CONTAINERS_CONF": str(CONF)})
    out = subprocess.CompletedProcess(result.args, result.returncode,
                                      result.stdout.decode(errors="replace"),
                                      result.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n"
                             f"{out.stdout}\n{out.stderr}")
    return out


def base_image(root: Path) -> str:
    """``localhost/nma-debian-base:<root name>``, imported from ``root`` if not there."""
    name = f"localhost/nma-debian-base:{root.name}"
    if podman("image", "exists", name, check=False).returncode != 0:
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True,
                             check=True, timeout=600).stdout
        podman("import", "-", name, input_bytes=tar)
    return name


def build_image(base: str, tag: str, agent_version: str) -> str:
    """packaging/Dockerfile built from ``base`` with the wheels in dist/wheels/."""
    podman("build", "--quiet", "-f", str(ROOT / "packaging" / "Dockerfile"),
           "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"AGENT_VERSION={agent_version}",
           "-t", tag, str(ROOT), timeout=900)
    return tag


def inspect(name: str) -> dict[str, Any]:
    (data,) = json.loads(podman("inspect", name).stdout)
    assert isinstance(data, dict)
    return data


def died_codes(name: str) -> list[int]:
    """Exit codes of every death of container ``name`` (by its id: a name is reused across
    runs), from podman's own event log."""
    container_id = str(inspect(name)["Id"])
    out = podman("events", "--stream=false", "--since", "1h", "--filter",
                 f"container={container_id}", "--filter", "event=died",
                 "--format", "{{.ID}} {{.ContainerExitCode}}").stdout
    return [int(code) for line in out.splitlines() if line.strip()
            for cid, code in [line.split()] if cid == container_id]
