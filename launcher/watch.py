"""``python -m launcher.watch FILE...``: prints a file's path on stdout each time it changes.

A long-lived helper of the resident, started only when there is something to watch (a
``file://`` manifest, a config file), so the resident itself never imports watchfiles.
Files are watched through their directories, so an atomic replace (write a temp file,
rename it over) is seen like an in-place write. The helper dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

import watchfiles

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m launcher.watch FILE...", file=sys.stderr)
        return 2
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 0
    targets = {str(Path(p).resolve()) for p in argv}
    dirs = sorted({str(Path(t).parent) for t in targets if Path(t).parent.is_dir()})
    if not dirs:
        print(f"none of the directories of {', '.join(sorted(targets))} exist", file=sys.stderr)
        return 1

    def wanted(change: watchfiles.Change, path: str) -> bool:
        return change != watchfiles.Change.deleted and path in targets

    for changes in watchfiles.watch(*dirs, watch_filter=wanted, debounce=200, step=50,
                                    recursive=False):
        for path in sorted({p for _, p in changes}):
            print(path, flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
