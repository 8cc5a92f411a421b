"""Fixtures of the platform suite: the tools it drives, the Debian package, the Debian root.

Everything here is real and slow, so each expensive thing is made once per session: the
wheels, the ``.deb`` (``scripts/build-deb.sh``), the debootstrap root (cached between runs
by :mod:`debian_root`). Tests copy what they change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, unavailable

from platforms import debian_root

TOOLS = {
    "dpkg-deb": "dpkg", "lintian": "lintian", "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container", "nsenter": "util-linux", "podman": "podman",
    "runc": "runc",
}


def need_tool(name: str) -> str:
    """The tool's path; missing fails under CI=true and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is missing: apt-get install {TOOLS.get(name, name)}")
    assert path is not None
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("the platform suite needs root (debootstrap, systemd-nspawn, podman)")


@pytest.fixture(scope="session")
def wheels() -> Path:
    """The pinned dependencies and the project's wheel for this machine's architecture."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-wheels.sh")], check=True,
                         capture_output=True, text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


def build_deb(wheels: Path, output: Path, *args: str) -> Path:
    need_tool("dpkg-deb")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build-deb.sh"), "--wheels",
                          str(wheels), "--output", str(output), *args],
                         check=True, capture_output=True, text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def deb(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package for this machine, built once per session."""
    return build_deb(wheels, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    """The cached Debian 12 root (built on first use); never modified: copy it."""
    need_root()
    need_tool("debootstrap")
    return debian_root.ensure_root()
