"""What every part of the resident shares: the settings, the journal and the state it holds,
the loop, and the few small services they all use (a fault hook, hashing and version
order in short-lived helpers, a binary's ``--version``).

One object, so that the supervisor and the update machine (``launcher.updates``) read and
journal one state, never two copies of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import faults, isolated
from launcher import seed as seeding
from launcher.child import agent_environ, run_capture
from launcher.journal import State, new_state, utc_iso
from launcher.loop import Loop
from launcher.metrics import MeteredJournal
from launcher.reaper import Reaper
from launcher.sdnotify import Notifier
from launcher.settings import Settings

if TYPE_CHECKING:
    from launcher.checks import CheckRunner
    from launcher.keeper import AgentKeeper

log = logging.getLogger(__name__)

class Resident:
    def __init__(self, settings: Settings, env: dict[str, str], wall: Callable[[], float],
                 fault: faults.FaultHook | None) -> None:
        self.s = settings
        self.env = env
        self.wall = wall
        self.fault_hook = fault
        self.container = settings.container(env)
        self.journal = MeteredJournal(settings.state_dir, lambda: self.s, wall)
        self.reaper = Reaper()
        self.loop = Loop(self.reaper)
        self.notify = Notifier(env)
        self.state = new_state()
        self.pid = os.getpid()
        self.stopping = False
        # Set by the supervisor once built (they take callbacks into it).
        self.keeper: AgentKeeper
        self.checks: CheckRunner

    def save(self, state: State) -> None:
        self.state = self.journal.save(state)

    def now_iso(self, delay_s: float = 0.0) -> str:
        return utc_iso(self.wall() + delay_s)

    def fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    def version(self) -> str:
        return self.state.current.version if self.state.current else "?"

    def describe(self) -> str:
        """One line for systemd's STATUS=: what runs and in which phase."""
        child = self.state.child
        what = f"agent {self.version()} {child.state if child else 'not started'}"
        if self.state.phase == "trial":
            what += " (on trial)"
        if self.state.last_error:
            what += f"; last check failed: {self.state.last_error}"
        return what

    def seed(self) -> None:
        """Install ``--seed-binary`` when the files and the journal call for it."""
        assert self.s.seed_binary is not None
        self.save(seeding.install_seed(self.state, self.s.seed_binary, self.s.bin_dir,
                                       self.shas, self.run, self.compare))

    def save_child(self, what: str) -> None:
        info = self.keeper.info(self.version(), what, self.now_iso())
        self.save(dataclasses.replace(self.state, child=info))
        self.notify.status(self.describe())

    # ---- small services, each its own process -------------------------------------------

    def shas(self, paths: Sequence[Path]) -> list[str | None]:
        return isolated.shas(paths, self.reaper, self.env, self.pid)

    def compare(self, a: str, b: str) -> int | None:
        order = isolated.compare(a, b, self.reaper, self.env, self.pid)
        if order is None:
            log.warning("cannot order versions %r and %r", a, b)
        return order

    def run(self, argv: list[str]) -> tuple[int, str]:
        """A binary's ``--version``, without the launcher's settings or credentials."""
        return run_capture(argv, self.reaper, env=agent_environ(self.env))
