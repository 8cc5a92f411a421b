"""The agent child (and any helper process): spawn, signal, stop, exit status.

Children are started with ``os.posix_spawn`` in their own process group, with an empty
signal mask, default dispositions and an environment without the launcher's
``NOTIFY_SOCKET``, ``WATCHDOG_*`` and ``LISTEN_*`` variables. Their statuses come
from the ``Reaper``: nothing here calls ``waitpid``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from launcher.loop import Loop
from launcher.reaper import Reaper, decode_status, signal_name

log = logging.getLogger(__name__)

SCRUBBED_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")
# Every catchable signal back to its default in the child (SIG_IGN is inherited otherwise).
_DEFAULTS = {
    s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
}


# The launcher's own settings and its source credentials are none of the agent's business.
AGENT_ONLY_SCRUBBED = ("NGINX_MANAGER_", "GITHUB_TOKEN")


def child_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for our helpers (workers): without systemd's per-process variables."""
    env = dict(os.environ if base is None else base)
    return {k: v for k, v in env.items() if not k.startswith(SCRUBBED_PREFIXES)}


def agent_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the agent: also without the launcher's settings and credentials."""
    return {k: v for k, v in child_environ(base).items()
            if not k.startswith(AGENT_ONLY_SCRUBBED)}


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin_fd: int | None = None,
    stdout_fd: int | None = None,
    new_group: bool = True,
) -> int:
    """Start ``argv`` and return its pid; raises OSError when it cannot be executed."""
    actions: list[tuple[int, int, int]] = []
    if stdin_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdin_fd, 0))
    if stdout_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdout_fd, 1))
    if new_group:
        return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions or None,
                              setpgroup=0, setsigmask=(), setsigdef=_DEFAULTS)
    return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions or None,
                          setsigmask=(), setsigdef=_DEFAULTS)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.Error, OSError):
        return []


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (and ``pid`` itself if it left it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Child:
    """One running process we started: the agent, or a short-lived worker."""

    def __init__(self, name: str, pid: int, reaper: Reaper, clock: float) -> None:
        self.name = name
        self.pid = pid
        self.started = clock
        self._reaper = reaper
        self.status: int | None = None

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        reaper: Reaper,
        *,
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
        shown: str | None = None,
    ) -> Child:
        pid = spawn(argv, env, stdin_fd=stdin_fd, stdout_fd=stdout_fd)
        log.info("started %s (pid %d): %s", name, pid, shown or " ".join(argv))
        return cls(name, pid, reaper, time.monotonic())

    def poll(self) -> int | None:
        """The raw wait status once the process has exited, else None."""
        if self.status is None:
            self.status = self._reaper.pop(self.pid)
        return self.status

    @property
    def running(self) -> bool:
        return self.poll() is None

    def send(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def stop(self, grace_s: float, sig: int = signal.SIGTERM) -> int:
        """Polite signal, bounded wait, SIGKILL; also ends descendants that escaped the group.

        Returns the raw wait status.
        """
        if self.poll() is not None:
            assert self.status is not None
            end_group(self.pid, self._reaper)
            return self.status
        family = descendants(self.pid)
        log.info("stopping %s (pid %d) with %s, grace %.1fs",
                 self.name, self.pid, signal_name(sig), grace_s)
        signal_tree(self.pid, sig)
        status = self._reaper.wait_for(self.pid, grace_s)
        if status is None:
            log.warning("%s (pid %d) still running after %.1fs; sending SIGKILL",
                        self.name, self.pid, grace_s)
            signal_tree(self.pid, signal.SIGKILL)
            status = self._reaper.wait_for(self.pid, 10.0)
            if status is None:  # pragma: no cover - the kernel always delivers SIGKILL
                raise RuntimeError(f"{self.name} pid {self.pid} survived SIGKILL")
        self.status = status
        left = alive(family)
        for p in left:
            log.warning("killing leftover process %d of %s", p.pid, self.name)
        end_processes(left, 0.0, self._reaper)
        end_group(self.pid, self._reaper)
        log.info("%s (pid %d) %s", self.name, self.pid, decode_status(status)[1])
        return status


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` that still run (a zombie does not)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def end_processes(procs: list[psutil.Process], grace_s: float, reaper: Reaper) -> None:
    """SIGTERM, up to ``grace_s`` to go, then SIGKILL; exits are reaped (none is our child's
    business: these are leftovers nobody tracks)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        if sig == signal.SIGTERM and grace_s <= 0:
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error, OSError):
                p.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while (procs := alive(procs)) and time.monotonic() < deadline:
            time.sleep(0.02)
            reaper.reap()
        if not procs:
            break
    reaper.reap()


def end_group(pgid: int, reaper: Reaper) -> None:
    """Kill what is left of a process group whose leader has exited."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        reaper.reap()


def adopted(tracked: set[int]) -> list[psutil.Process]:
    """Our children that nobody started: orphans handed to us as PID 1 or as a subreaper,
    with whatever they have started since."""
    pids = child_pids()
    if pids is not None and pids <= tracked:
        return []  # the usual case, told without reading every process on the host
    try:
        kids = psutil.Process().children()
    except (psutil.Error, OSError):
        return []
    found = []
    for p in kids:
        if p.pid in tracked:
            continue
        found.append(p)
        with contextlib.suppress(psutil.Error, OSError):
            found.extend(p.children(recursive=True))
    return alive(found)


def child_pids() -> set[int] | None:
    """Our children's pids from ``/proc/self/task/*/children`` (one small read per thread;
    psutil finds children by reading every process); None where the kernel lacks it."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
    except (OSError, ValueError):
        return None
    return pids


class PipedChild:
    """A helper process whose stdout the loop reads: an update check or the file watcher."""

    MAX_OUTPUT = 1 << 20

    def __init__(self, proc: Child, stdout_fd: int, epoch: int, loop: Loop,
                 on_data: Callable[[], None] | None = None) -> None:
        self.proc = proc
        self.epoch = epoch  # the supervisor's decision epoch when the check started
        self.fd = stdout_fd
        self.buf = bytearray()
        self.eof = False
        self.loop = loop
        self.on_data = on_data
        os.set_blocking(stdout_fd, False)
        loop.add_reader(stdout_fd, self.read)

    def read(self) -> None:
        """Take what the pipe holds (capped); notes the end of output."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.eof = True
            self.loop.remove_reader(self.fd)
            return
        if len(self.buf) < self.MAX_OUTPUT:
            self.buf += chunk
        if self.on_data is not None:
            self.on_data()

    def drain(self) -> None:
        """Read what is left once the process has exited (a grandchild may hold the pipe
        open, so the end of output is not waited for)."""
        for _ in range(64):
            if self.eof:
                return
            before = len(self.buf)
            self.read()
            if len(self.buf) == before and not self.eof:
                return

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


def spawn_piped(name: str, argv: Sequence[str], env: Mapping[str, str], reaper: Reaper,
                loop: Loop, epoch: int, stdin: bytes = b"",
                on_data: Callable[[], None] | None = None,
                shown: str | None = None) -> PipedChild:
    """Start ``argv`` with ``stdin`` as its whole input and its stdout read by the loop.
    Raises OSError when it cannot be started."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = Child.start(name, argv, env, reaper, stdin_fd=in_r, stdout_fd=out_w,
                           shown=shown)
    except OSError:
        os.close(out_r)
        os.close(in_w)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    try:  # small: fits the pipe; closing sends EOF
        with contextlib.suppress(BrokenPipeError):
            os.write(in_w, stdin)
    finally:
        os.close(in_w)
    return PipedChild(proc, out_r, epoch, loop, on_data)


def run_capture(argv: Sequence[str], reaper: Reaper, timeout_s: float = 10.0,
                env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run a short command (``agent --version``) through the reaper; (exit code, stdout)."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = spawn(argv, child_environ(env), stdin_fd=devnull, stdout_fd=wfd)
    except OSError:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
        os.close(devnull)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    os.set_blocking(rfd, False)
    import select

    try:
        while len(out) < 65536:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([rfd], [], [], remaining)
            if not ready:
                break
            try:
                chunk = os.read(rfd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                break
            out += chunk
    finally:
        os.close(rfd)
    status = reaper.wait_for(pid, max(0.0, deadline - time.monotonic()))
    if status is None:
        signal_tree(pid, signal.SIGKILL)
        reaper.wait_for(pid, 5.0)
        return -1, out.decode(errors="replace")
    return decode_status(status)[0], out.decode(errors="replace")


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
