"""The agent keeper: exactly one agent child, started, stopped and restarted in one place.

It owns the child, the crash backoff and the single pending restart (timer
``agent.restart``). Every start cancels that restart and stops a child that still runs,
so nothing (an operator's rollback, an update applied during crash backoff, a repair) can
leave a second, untracked copy of the agent behind.

After any exit of the agent, what it left behind is ended: the rest of its process group
and every orphan the kernel handed to the launcher that nobody tracks. An agent that
exits 0 and leaves processes behind has put itself in the background; that is said in
plain words. The running agent's pid and start time are journaled (``ChildInfo``), so a
launcher that was killed alone finds the agent that outlived it and stops it before it
starts a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

import psutil

from launcher import child as proc
from launcher.child import Child
from launcher.journal import ChildInfo
from launcher.loop import Loop
from launcher.policy import crash_restart_delay
from launcher.reaper import Reaper, decode_status

log = logging.getLogger(__name__)

STABLE_RUN_S = 60.0  # a child up this long resets the crash backoff
LEFTOVER_GRACE_S = 2.0
RESTART = "agent.restart"


class AgentKeeper:
    def __init__(
        self,
        loop: Loop,
        argv: Callable[[], Sequence[str]],
        env: Mapping[str, str],
        stop_grace_s: Callable[[], float],
        *,
        on_exit: Callable[[str, float], None],
        on_restart_due: Callable[[], None],
        tracked: Callable[[], set[int]],
    ) -> None:
        self.loop = loop
        self.argv = argv
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.on_exit = on_exit  # (words, seconds it ran): the supervisor decides what follows
        self.on_restart_due = on_restart_due
        self.tracked = tracked  # pids other owners track (workers, the watcher)
        self.child: Child | None = None
        self.crashes = 0
        self.last_exit: str | None = None
        # Side effects, injected with the real ones as defaults (the model test fakes them).
        self.spawn: Callable[[str, list[str], Mapping[str, str], Reaper], Child] = Child.start
        self.leftovers: Callable[[int | None, set[int]], list[str]] = (
            lambda group, tracked: end_leftovers(group, tracked, loop.reaper))
        self.clock = loop.timers.clock

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    @property
    def restart_pending(self) -> bool:
        return self.loop.timers.pending(RESTART)

    def pids(self) -> set[int]:
        return {self.child.pid} if self.child is not None else set()

    def age_s(self) -> float:
        return self.clock() - self.child.started if self.child is not None else 0.0

    def start(self, label: str) -> Child:
        """Start the agent (stopping one that still runs); raises OSError when it cannot."""
        self.loop.timers.cancel(RESTART)
        if self.child is not None:
            self.stop()
        self.child = self.spawn(label, list(self.argv()), self.env, self.loop.reaper)
        return self.child

    def stop(self) -> int | None:
        """Stop the agent if it runs; its raw wait status, None when none ran."""
        self.loop.timers.cancel(RESTART)
        if self.child is None:
            return None
        child, self.child = self.child, None
        status = child.stop(self.stop_grace_s())
        self.end_leftovers()
        return status

    def poll(self) -> None:
        """Called each turn: notices the agent's exit, cleans up, tells the supervisor."""
        if self.child is None or (status := self.child.poll()) is None:
            return
        child, self.child = self.child, None
        ran_s = self.clock() - child.started
        code, words = decode_status(status)
        left = self.end_leftovers(child.pid)
        if code == 0 and left:
            log.error("agent (pid %d) exited 0 after %.1fs but left %s running: it put "
                      "itself in the background (daemonized). The launcher runs the agent "
                      "in the foreground; start it without its daemon or background option. "
                      "The leftovers were stopped.", child.pid, ran_s, ", ".join(left))
            words = "put itself in the background (exited 0, left processes running)"
        self.last_exit = words
        self.on_exit(words, ran_s)

    def end_leftovers(self, group: int | None = None) -> list[str]:
        """End the rest of the agent's process group (``group``, once its leader exited) and
        every untracked orphan we adopted; what was found running, in words."""
        return self.leftovers(group, self.tracked() | self.pids())

    def restart_after_crash(self, ran_s: float) -> float:
        """Schedule the one pending restart with crash backoff; returns its delay."""
        self.crashes = 1 if ran_s >= STABLE_RUN_S else self.crashes + 1
        delay = crash_restart_delay(self.crashes)
        self.loop.timers.set(RESTART, delay, self.on_restart_due)
        return delay

    def reset_backoff(self) -> None:
        self.crashes = 0

    def info(self, version: str, state: str, since: str) -> ChildInfo:
        """What the journal keeps of the agent: pid and start time while it runs."""
        if state == "running" and self.child is not None:
            return ChildInfo(pid=self.child.pid, version=version, state=state, since=since,
                             create_time=_create_time(self.child.pid))
        return ChildInfo(pid=None, version=version, state=state, since=since)


def end_leftovers(group: int | None, tracked: set[int], reaper: Reaper) -> list[str]:
    left = proc.adopted(tracked)
    if group is not None:
        left += [p for p in _group_members(group) if p.pid not in {q.pid for q in left}]
    words = [f"pid {p.pid} ({_name(p)})" for p in left]
    if left:
        log.warning("stopping %d process(es) the agent left behind: %s", len(left),
                    ", ".join(words))
        proc.end_processes(left, LEFTOVER_GRACE_S, reaper)
    if group is not None:
        proc.end_group(group, reaper)
    return words


def stop_survivor(info: ChildInfo | None, grace_s: float, agent_path: str) -> bool:
    """Stop an agent that outlived the launcher that started it (only the launcher was
    killed). Identified by the journaled pid *and* start time, and by running our agent
    binary, so a recycled pid is never touched. True when one was found and stopped."""
    if info is None or info.pid is None or info.create_time is None or info.pid == os.getpid():
        return False
    try:
        p = psutil.Process(info.pid)
        if abs(p.create_time() - info.create_time) > 0.05:
            return False
        if agent_path not in p.cmdline()[:2]:  # the binary itself, or a script's interpreter
            return False
    except (psutil.Error, OSError):
        return False
    log.warning("agent %s (pid %d) outlived the previous launcher; stopping it before "
                "starting a new one", info.version, info.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(info.pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error, OSError):
        p.terminate()
    _, alive = psutil.wait_procs([p], timeout=grace_s)
    if alive:
        log.warning("agent pid %d still running after %.1fs; sending SIGKILL", info.pid,
                    grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error, OSError):
            p.kill()
        psutil.wait_procs([p], timeout=5.0)
    return True


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _group_members(pgid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid != pgid and os.getpgid(p.pid) == pgid:
                found.append(p)
    return proc.alive(found)


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:80] or p.name()
    except (psutil.Error, OSError):
        return "?"
