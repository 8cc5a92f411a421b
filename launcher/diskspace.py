"""Room for a new build, checked before its download starts.

The swap keeps three builds on one filesystem for a moment: ``bin/agent``, ``bin/agent.old``
and the new one downloaded beside them (``agent.old`` is replaced only by the rename).
Those two already take their space, so the filesystem must have the new build's size free,
plus a margin for the journal and whatever else shares the disk. When it does not, the
check fails with a ``host:`` error before a byte is written: nothing is touched, the agent
keeps running and the check is retried on the failure backoff. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from launcher.errors import HostError


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def require_room(bin_dir: Path, needed: int, margin: int, version: str) -> None:
    """Raise HostError unless ``needed`` bytes plus ``margin`` are free beside ``bin_dir``."""
    try:
        free = free_bytes(bin_dir)
    except OSError as exc:
        raise HostError(f"cannot tell the free space in {bin_dir}: {exc.strerror}") from exc
    if free < needed + margin:
        raise HostError(
            f"not enough disk space for {version} in {bin_dir}: {_mib(free)} free, "
            f"{_mib(needed)} needed for the new build beside agent and agent.old plus a "
            f"margin of {_mib(margin)}; nothing was downloaded, will retry")


def build_size(announced: int | None, bin_dir: Path, max_bytes: int) -> int:
    """The new build's size: the manifest's, else the running build's as an estimate (the
    download itself stops at ``max_bytes`` whatever this says)."""
    if announced is not None:
        return announced
    try:
        return (bin_dir / "agent").stat().st_size
    except OSError:
        return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
