"""A Debian 12 root made by ``debootstrap``, built once and cached between runs.

    python3 tests/platforms/debian_root.py        # build (or find) it, print its path

The root is the slow part of the platform suite (about 1.5 min and 300 MB), so it is kept
outside the repository under ``$NMA_PLATFORM_CACHE`` (default
``/var/cache/nginx-manager-agent-tests``), in a directory named after a hash of everything
that decides its contents: the suite, the mirror and the package list. Change any of them
and a new root is built beside the old one. A build goes to a temporary directory and is
renamed into place when complete, under a lock, so an interrupted build is never reused and
two runs never build at once. Tests never boot the cached root itself: they copy it.

The same root serves both platforms: booted with ``systemd-nspawn`` (systemd, dbus), and
imported with ``podman import`` as the base image of ``packaging/Dockerfile`` (python3-venv).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def cache_dir() -> Path:
    return Path(os.environ.get("NMA_PLATFORM_CACHE", "/var/cache/nginx-manager-agent-tests"))


def mirror() -> str:
    """The mirror this machine's apt uses (the first ``URIs:`` of debian.sources)."""
    if SOURCES.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", SOURCES.read_text(), re.M)
        if found:
            return found.group(1)
    return DEFAULT_MIRROR


def key() -> str:
    text = "\n".join([SUITE, mirror(), "minbase", *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def root_path() -> Path:
    return cache_dir() / f"debian-{SUITE}-{key()}"


def ensure_root() -> Path:
    """The cached root, built first if it is not there yet."""
    root = root_path()
    if (root / "etc" / "os-release").exists():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "etc" / "os-release").exists():
            return root
        building = root.with_name(root.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(building), mirror()],
            check=True, stdout=subprocess.DEVNULL, timeout=900)
        # apt's package lists and downloaded debs are not needed to boot or to import.
        for deb in (building / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        building.rename(root)
    return root


if __name__ == "__main__":
    print(ensure_root())
    sys.exit(0)
