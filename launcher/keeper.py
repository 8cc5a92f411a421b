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

A deliberate overlap (``start(overlap=True)``, the ``overlap`` hand-over) keeps the
running agent as ``outgoing`` while the new one starts: the pair is the only time two
agents run. The outgoing one is stopped once the new one is ready (``finish_handover``),
or taken back if the new one never gets there (``take_back``); either way the pair ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
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
HANDOVER = "agent.handover"


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
        self.outgoing: Child | None = None  # the old agent, serving until the new is ready
        self.ready = False  # the current child sent READY=1
        self.crashes = 0
        # Children we had before starting anything (a sidecar started by the entrypoint
        # before it exec'd the launcher): inherited, not orphans the agent left.
        self.inherited = {p.pid for p in proc.adopted(set())}
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
        return {c.pid for c in (self.child, self.outgoing) if c is not None}

    def age_s(self) -> float:
        return self.clock() - self.child.started if self.child is not None else 0.0

    def start(self, label: str, *, overlap: bool = False,
              deadline_s: float | None = None) -> Child:
        """Start the agent; raises OSError when it cannot. One that still runs is stopped
        first, or, with ``overlap``, kept serving as ``outgoing`` until the new one is
        ready (and stopped after ``deadline_s`` anyway, when given). An overlap already
        under way keeps its outgoing agent: only the unready new one is replaced."""
        self.loop.timers.cancel(RESTART)
        if overlap and self.outgoing is None and self.child is not None and self.child.running:
            self.outgoing, self.child = self.child, None
            log.info("agent (pid %d) keeps serving until the new one is ready",
                     self.outgoing.pid)
        if not overlap:
            self.finish_handover()  # a plain start (a crash restart): no pair outlives it
        if self.child is not None:
            self._stop_child()
        if self.outgoing is None or deadline_s is None:
            self.loop.timers.cancel(HANDOVER)
        else:
            self.loop.timers.set(HANDOVER, deadline_s, self._handover_overdue)
        self.ready = False
        try:
            self.child = self.spawn(label, list(self.argv()), self.env, self.loop.reaper)
        except OSError:
            self.finish_handover()  # nothing new runs: the old one must not linger either
            raise
        return self.child

    def stop(self) -> int | None:
        """Stop the agent (and an outgoing one) if it runs; its raw wait status, None when
        none ran."""
        self.loop.timers.cancel(RESTART)
        self.finish_handover()
        return self._stop_child()

    def _stop_child(self) -> int | None:
        if self.child is None:
            return None
        child, self.child = self.child, None
        status = child.stop(self.stop_grace_s())
        self.end_leftovers()
        return status

    def child_ready(self) -> None:
        """The current child sent READY=1: an overlap ends with the old one stopped."""
        self.ready = True
        self.finish_handover()

    def finish_handover(self) -> None:
        """Stop the outgoing agent, if there is one."""
        self.loop.timers.cancel(HANDOVER)
        if self.outgoing is None:
            return
        old, self.outgoing = self.outgoing, None
        log.info("handing over: stopping the previous agent (pid %d)", old.pid)
        old.stop(self.stop_grace_s())
        self.end_leftovers()

    def take_back(self) -> bool:
        """The new agent of an overlap failed: stop it and make the outgoing one, which
        never stopped, the current agent again. False when there is none to take back."""
        self.loop.timers.cancel(HANDOVER)
        if self.outgoing is None or not self.outgoing.running:
            return False
        self._stop_child()  # while the outgoing one is still tracked: not a leftover
        old, self.outgoing = self.outgoing, None
        self.child = old
        self.ready = True
        log.info("agent (pid %d) never stopped and serves on", old.pid)
        return True

    def _handover_overdue(self) -> None:
        if self.outgoing is not None:
            log.warning("the new agent sent no READY=1 in time; stopping the previous one "
                        "(pid %d) anyway", self.outgoing.pid)
            self.finish_handover()

    def which(self, pid: int) -> str | None:
        """``current`` or ``outgoing``: whose process group a notify sender is in."""
        from launcher.notifyd import belongs_to

        for name, c in (("current", self.child), ("outgoing", self.outgoing)):
            if c is not None and belongs_to(pid, c.pid):
                return name
        return None

    def poll(self) -> None:
        """Called each turn: notices the agent's exit, cleans up, tells the supervisor. An
        outgoing agent that exits on its own is only cleaned up: it was on its way out."""
        if self.outgoing is not None and self.outgoing.poll() is not None:
            old, self.outgoing = self.outgoing, None
            self.loop.timers.cancel(HANDOVER)
            log.warning("the previous agent (pid %d) %s during the hand-over", old.pid,
                        decode_status(old.status or 0)[1])
            self.end_leftovers(old.pid)
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
        return self.leftovers(group, self.tracked() | self.pids() | self.inherited)

    def restart_after_crash(self, ran_s: float) -> float:
        """Schedule the one pending restart with crash backoff; returns its delay."""
        self.crashes = 1 if ran_s >= STABLE_RUN_S else self.crashes + 1
        delay = crash_restart_delay(self.crashes)
        self.loop.timers.set(RESTART, delay, self.on_restart_due)
        return delay

    def reset_backoff(self) -> None:
        self.crashes = 0

    def info(self, version: str, state: str, since: str) -> ChildInfo:
        """What the journal keeps of the agent: pid and start time while it runs; while it
        is being started ("starting"), the time before the spawn, so that a launcher killed
        between the spawn and the next write still finds it."""
        if state == "running" and self.child is not None:
            return ChildInfo(pid=self.child.pid, version=version, state=state, since=since,
                             create_time=_create_time(self.child.pid))
        if state == "starting":
            return ChildInfo(pid=None, version=version, state=state, since=since,
                             create_time=time.time())
        return ChildInfo(pid=None, version=version, state=state, since=since)


def end_leftovers(group: int | None, tracked: set[int], reaper: Reaper) -> list[str]:
    left = proc.adopted(tracked)
    if group is not None:
        left += [p for p in group_members(group) if p.pid not in {q.pid for q in left}]
    words = [f"pid {p.pid} ({_name(p)})" for p in left]
    if left:
        log.warning("stopping %d process(es) the agent left behind: %s", len(left),
                    ", ".join(words))
        proc.end_processes(left, LEFTOVER_GRACE_S, reaper)
    if group is not None:
        proc.end_group(group, reaper)
    return words


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def group_members(pgid: int) -> list[psutil.Process]:
    """The processes left in group ``pgid`` (its leader excluded). A group with nobody in
    it is told by one signal-0 probe, without reading every process on the host."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # a member we may not signal: look for it
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
