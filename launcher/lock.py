"""One launcher per state directory: an ``flock`` on ``run/launcher.lock`` holding its pid.

The lock lives in ``run/`` (0700, ``launcher.permissions``): no other local user can open it, so
none can hold it to keep the launcher from starting. It is opened without following
symlinks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import psutil

from launcher import permissions
from launcher.errors import HostError, LockedError

LOCK_NAME = "launcher.lock"


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / permissions.RUN_DIR / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        writable = True
        with contextlib.suppress(OSError):  # read-only: the lock file may still be there
            permissions.private_dir(self.state_dir)
        try:
            fd = permissions.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # A read-only state dir must not stop the agent: lock the existing file
            # read-only (flock works on any fd) and let the journal report the problem.
            try:
                fd = permissions.open_nofollow(self.path, os.O_RDONLY)
            except OSError:
                raise HostError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_pid(self.path.parent)
            who = f" (pid {holder})" if holder else ""
            raise LockedError(
                f"another launcher{who} is already running on {self.path.parent}; "
                "stop it first, or give this one its own --state-dir") from None
        if writable:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(state_dir: Path) -> int | None:
    """The pid written by the launcher that holds (or last held) the lock, if it still runs.

    Read without taking the lock, so ``status`` never gets in a starting launcher's way.
    """
    try:
        text = (state_dir / permissions.RUN_DIR / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return pid if "launcher" in cmdline else None
