"""Start the agent with listening sockets as fd 3 onwards and ``LISTEN_PID`` set to its pid.

``LISTEN_PID`` must name the agent's own pid (sd_listen_fds(3) ignores the sockets
otherwise), which is known only after the fork: ``posix_spawn`` cannot set it. So the
agent is started with ``fork`` and ``execve``, and the child, before it executes the agent:

- blocks nothing and catches nothing (every catchable signal back to its default, an
  empty mask, set while every signal is still blocked, so that none of the launcher's
  handlers runs in the child);
- moves into its own process group (as ``posix_spawn(setpgroup=0)`` does);
- duplicates the held sockets to 3, 4, ... (they sit at 64 and above in the launcher, so
  no move overwrites one still to be moved; the error pipe, when it sits in that range,
  is lifted above it first), and stdin/stdout when asked;
- adds ``LISTEN_PID`` (and ``WATCHDOG_PID`` when a watchdog is given) to the environment.

Only async-signal-safe work is left between fork and exec in spirit: the launcher is
single-threaded, so no lock can be held by another thread at the fork. When ``execve``
fails its errno comes back over a close-on-exec pipe and ``spawn`` raises ``OSError``,
exactly as ``posix_spawn`` does, so the keeper's handling of a missing binary is the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Mapping, Sequence

from launcher.sockets import SD_LISTEN_FDS_START

_DEFAULTS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
_ALL = set(signal.valid_signals())


def spawn(argv: Sequence[str], env: Mapping[str, str], fds: Sequence[int], *,
          watchdog: bool = False) -> int:
    """Fork and exec ``argv`` with ``fds`` as 3, 4, ...; returns the pid. OSError when the
    binary cannot be executed (the child is reaped by the caller's reaper)."""
    path = argv[0]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    env_list = dict(env)
    old_mask = signal.pthread_sigmask(signal.SIG_SETMASK, _ALL)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(err_r)
        os.close(err_w)
        raise
    if pid == 0:  # the child: nothing here returns
        _child(path, list(argv), env_list, list(fds), err_w, watchdog)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(err_w)
    try:
        data = b""
        while chunk := os.read(err_r, 16):
            data += chunk
    finally:
        os.close(err_r)
    if data:
        errno = int(data.decode() or "0")
        raise OSError(errno, os.strerror(errno), path)
    return pid


def _child(path: str, argv: list[str], env: dict[str, str], fds: list[int], err_w: int,
           watchdog: bool) -> None:
    try:
        signal.set_wakeup_fd(-1)
        for sig in _DEFAULTS:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)
        if err_w < SD_LISTEN_FDS_START + len(fds):  # a move would close it: lift it clear
            err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, SD_LISTEN_FDS_START + len(fds))
        for i, fd in enumerate(fds):
            target = SD_LISTEN_FDS_START + i
            os.dup2(fd, target, inheritable=True)
        pid = os.getpid()
        env["LISTEN_PID"] = str(pid)
        if watchdog:
            env["WATCHDOG_PID"] = str(pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(path, argv, env)  # noqa: S606 (the agent is exec'd directly, no shell)
    except OSError as exc:
        try:
            os.write(err_w, str(exc.errno or 1).encode())
        finally:
            os._exit(127)
    except BaseException:
        os._exit(127)
    os._exit(127)  # pragma: no cover - execve does not return
