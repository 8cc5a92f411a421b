"""Agents that outlived the launcher that started it (only the launcher was killed).

A new launcher stops them before it starts its own agent or binds ``--listen``: the
journaled agent (known by pid *and* start time, whatever its command line says),
and any other process still running the agent binary of this state directory (an
overlap's outgoing agent is journaled nowhere).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import psutil

from launcher.journal import ChildInfo
from launcher.keeper import group_members

log = logging.getLogger(__name__)


def stop_survivor(info: ChildInfo | None, grace_s: float, agent_path: str) -> bool:
    """Stop an agent that outlived the launcher that started it (only the launcher was
    killed). A running one is known by its journaled pid *and* start time alone: a
    recycled pid does not start at the same instant, and an agent that is a wrapper which
    exec'd its server no longer names our binary on its command line. One the launcher was
    still starting when it died ("starting", no pid yet) is known by running ``agent_path``
    (compared as real paths) and having started after the mark. True when one was found;
    it is stopped with its whole family before this returns."""
    if info is None or info.create_time is None:
        return False
    if info.state == "running" and isinstance(info.pid, int) and info.pid > 0:
        p = _process(info.pid)
        found = [p] if p is not None and _started_at(p, info.create_time, 0.05) else []
    elif info.state == "starting":
        found = [p for p in psutil.process_iter() if _started_after(p, info.create_time - 1.0)
                 and _runs(p, agent_path)]
    else:
        return False
    found = [p for p in found if p.pid != os.getpid()]
    if not found:
        return False
    log.warning("agent %s (pid %s) outlived the previous launcher; stopping it before "
                "starting a new one", info.version, ", ".join(str(p.pid) for p in found))
    stop_family(found, grace_s)
    return True


def stop_strays(agent_path: str, grace_s: float) -> bool:
    """Stop every process that still runs our agent binary: the outgoing agent of an
    overlap whose launcher was killed is journaled nowhere, and it would hold the
    listening sockets the new launcher is about to bind. The path is inside our state
    directory, which only one launcher (the lock) uses. True when one was found."""
    found = [p for p in psutil.process_iter() if p.pid != os.getpid() and _runs(p, agent_path)]
    if not found:
        return False
    log.warning("agent process(es) %s outlived the previous launcher; stopping them",
                ", ".join(str(p.pid) for p in found))
    stop_family(found, grace_s)
    return True


def stop_family(procs: list[psutil.Process], grace_s: float) -> None:
    """TERM to each process, its group and its descendants; wait for *all* of them (a
    wrapper's server may drain after the wrapper is gone); KILL what is left."""
    family: dict[int, psutil.Process] = {p.pid: p for p in procs}
    for p in procs:
        for q in [*group_members(p.pid), *_descendants(p)]:
            family.setdefault(q.pid, q)
    members = list(family.values())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        for q in members:
            with contextlib.suppress(psutil.Error, OSError):
                q.send_signal(sig)
        _, members = psutil.wait_procs(members, timeout=grace_s if sig == signal.SIGTERM
                                       else 5.0)
        if not members:
            return
        log.warning("agent processes %s still running after %.1fs; sending SIGKILL",
                    ", ".join(str(q.pid) for q in members), grace_s)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.Error, OSError, ValueError):
        return None


def _started_at(p: psutil.Process, at: float, slack: float) -> bool:
    try:
        return abs(p.create_time() - at) <= slack
    except (psutil.Error, OSError):
        return False


def _started_after(p: psutil.Process, at: float) -> bool:
    try:
        return p.create_time() >= at
    except (psutil.Error, OSError):
        return False


def _runs(p: psutil.Process, agent_path: str) -> bool:
    """The binary itself or, for a script, its interpreter's first argument is our agent."""
    want = os.path.realpath(agent_path)
    try:
        return any(os.path.realpath(arg) == want for arg in p.cmdline()[:2] if arg)
    except (psutil.Error, OSError):
        return False


def _descendants(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except (psutil.Error, OSError):
        return []
