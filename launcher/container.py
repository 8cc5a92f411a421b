"""Container mode: exit 100 after a swap, count restarts during a trial, insist on a volume.

A container restart gets a fresh root filesystem: the updated binary and the journal
survive it only on a volume. A state dir on the container's own root filesystem would be
swapped, exit 100, come back with the image's build and swap again, for ever; such a
state dir is refused at start instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_SWAPPED = 100
MAX_TRIAL_RESTARTS = 2  # container restarts during a trial, beyond the one the swap asks for
TERMINATION_LOG = Path("/dev/termination-log")
MOUNTINFO = Path("/proc/self/mountinfo")


def mount_point(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The mount point that holds ``path`` (the longest one above it); None when unknown."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: str | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best)):
            best = point
    return best


def volume_problem(state_dir: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Why ``state_dir`` would not survive a container restart, or None."""
    point = mount_point(state_dir, mountinfo)
    if point == "/":
        return (f"container mode: the state dir {state_dir} is on the container's own root "
                "filesystem, which a restart throws away with the updated build; mount a "
                "volume there (an emptyDir in Kubernetes, -v NAME:DIR with podman or docker)")
    return None


def say_swapped(version: str) -> str:
    message = f"swapped in {version}; exiting {EXIT_SWAPPED} so the container restarts on it"
    log.info("container mode: %s", message)
    with contextlib.suppress(OSError):
        if TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(message + "\n")
    return message


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
