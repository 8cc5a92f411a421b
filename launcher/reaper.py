"""The one owner of ``waitpid``: every child, and every orphan when we are PID 1.

``subprocess`` and asyncio each call ``waitpid`` on their own pids and lose a race with
a process-wide reaper (a stolen status reads as exit 0), so the resident never uses
them: children are started with ``os.posix_spawn`` and their statuses are collected
here, by ``waitpid(-1, WNOHANG)`` after each SIGCHLD. Signal handlers only record; the
wakeup fd makes ``select`` return so the loop acts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import time
from collections import deque
from types import FrameType

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
HANDLED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
)


def set_subreaper() -> bool:
    """Adopt orphaned descendants (Linux >= 3.4); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def signal_name(signum: int) -> str:
    """``SIGTERM``; real-time signals as ``SIGRTMIN+3``; anything else as ``signal 77``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        pass
    rtmin, rtmax = signal.SIGRTMIN, signal.SIGRTMAX
    if rtmin < signum < rtmax:
        return f"SIGRTMIN+{signum - rtmin}"
    return f"signal {signum}"


def decode_status(status: int) -> tuple[int, str]:
    """(exit code in shell convention, words), for any status ``waitpid`` can return.

    ``(3, 'exited 3')``; ``(143, 'killed by SIGTERM')``; ``(166, 'killed by SIGRTMIN+4')``.
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return 128 + sig, f"killed by {signal_name(sig)}{core}"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return code, f"exited {code}"
    if os.WIFSTOPPED(status):  # only with WUNTRACED, which we never ask for
        return 128 + os.WSTOPSIG(status), f"stopped by {signal_name(os.WSTOPSIG(status))}"
    return 255, f"ended with wait status {status:#x}"


class Reaper:
    """Signal plumbing and child statuses for the resident's single-threaded loop."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.signals: deque[int] = deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup: int | None = None

    @property
    def wakeup_fd(self) -> int:
        return self._rfd

    def install(self) -> None:
        """Handlers for every signal we act on: as PID 1 there are no defaults to fall back on."""
        for sig in HANDLED:
            signal.signal(sig, self._record)
        self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        if os.getpid() != 1 and set_subreaper():
            log.debug("registered as child subreaper")

    def uninstall(self) -> None:
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1 if self._old_wakeup is None else self._old_wakeup)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def drain_wakeup(self) -> None:
        try:
            while os.read(self._rfd, 512):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> list[tuple[int, int]]:
        """Collect every exited child; statuses of orphans are logged and dropped by callers."""
        reaped = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.statuses[pid] = status
            reaped.append((pid, status))
        return reaped

    def pending(self) -> bool:
        """A signal or an exit status is queued: the loop's next wait must not block."""
        return bool(self.signals or self.statuses)

    def stop_requested(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    def pop(self, pid: int) -> int | None:
        return self.statuses.pop(pid, None)

    def forget_others(self, keep: set[int]) -> None:
        for pid in [p for p in self.statuses if p not in keep]:
            # Orphans the kernel handed us (as PID 1 or a subreaper): reaped and forgotten.
            log.debug("reaped orphan pid %d (%s)", pid, decode_status(self.statuses[pid])[1])
            del self.statuses[pid]

    def wait_for(self, pid: int, timeout_s: float) -> int | None:
        """Block up to ``timeout_s`` for ``pid`` to exit; its raw status, or None on timeout.

        Signals that arrive meanwhile stay queued in ``self.signals`` for the loop.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.reap()
            if pid in self.statuses:
                return self.statuses.pop(pid)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(InterruptedError):
                select.select([self._rfd], [], [], min(remaining, 0.5))
            self.drain_wakeup()

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
