"""The files in ``bin/``: install, swap, restore, and recovery after a kill.

``bin/agent`` is never absent once installed: every change is a single ``rename`` over
it. The swap first hard-links the running build to ``agent.old`` (replacing the older
one; a fsynced copy where the filesystem has no hard links), then renames the verified
staged file over ``agent``. A rollback renames
``agent.old`` over ``agent``. Temp files in ``bin/`` all start with ``.agent.`` so a
restarted launcher can recognise and remove leftovers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.errors import HostError
from launcher.faults import FaultHook
from launcher.files import fsync_dir, link_or_copy, set_mode
from launcher.journal import Build, State, Trial, utc_iso

log = logging.getLogger(__name__)


AGENT = "agent"
OLD = "agent.old"
TEMP_PREFIX = ".agent."
PARTIAL_PREFIX = ".agent.partial-"  # launcher.partial.PREFIX (kept: resumable)


# sha256 of each file, None for one that does not exist. The resident passes one that hashes
# in a short-lived process (it keeps OpenSSL out of its memory); the default hashes here.
Hasher = Callable[[Sequence[Path]], "list[str | None]"]


def file_shas(paths: Sequence[Path]) -> list[str | None]:
    from launcher.oneshot import sha256

    return [sha256(p) for p in paths]


def clean_temp_files(bin_dir: Path, keep: str | None = None) -> list[str]:
    """Remove leftovers of interrupted downloads and swaps; returns their names. A partial
    download (``.agent.partial-*``) stays for the next check to resume: ``launcher.partial``
    removes it when the release changes or it grows stale."""
    removed = []
    for p in bin_dir.glob(TEMP_PREFIX + "*"):
        if p.name != keep and not p.name.startswith(PARTIAL_PREFIX):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    if removed:
        log.info("removed leftover temp files in %s: %s", bin_dir, ", ".join(sorted(removed)))
    return removed


def stage_copy(bin_dir: Path, source: Path) -> str:
    """Copy ``source`` into a temp file in ``bin/`` (fsynced, executable); its name."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + "seed-", dir=bin_dir)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        set_mode(tmp, 0o755)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp).name


def swap_in(bin_dir: Path, staged_file: str, fault: FaultHook | None = None) -> None:
    """Make the staged file ``bin/agent``; the build it replaces becomes ``bin/agent.old``."""
    agent, old = bin_dir / AGENT, bin_dir / OLD
    if agent.exists():
        link = bin_dir / (TEMP_PREFIX + "old-link")
        link.unlink(missing_ok=True)
        link_or_copy(agent, link)
        os.replace(link, old)
        # rename(2) is a no-op when both names already link the same file (agent.old left
        # as a link of agent by an interrupted swap): the temp name must then go by hand.
        link.unlink(missing_ok=True)
        _fault(fault, "swap.old_linked")
    os.replace(bin_dir / staged_file, agent)
    _fault(fault, "swap.renamed")
    fsync_dir(bin_dir)


def _fault(hook: FaultHook | None, point: str) -> None:
    if hook is not None:
        hook(point)


def restore_previous(bin_dir: Path) -> None:
    """Rename ``bin/agent.old`` over ``bin/agent`` (the failed build is dropped)."""
    os.replace(bin_dir / OLD, bin_dir / AGENT)
    fsync_dir(bin_dir)




def rollback_refusal(state: State, bin_dir: Path, shas: Hasher = file_shas) -> str | None:
    """Why ``agent.old`` cannot be rolled back to, in words; None when it can.

    There must be a previous build on disk, and it must be another build than the one
    running: a kill between the two steps of a swap can leave both names on one file.
    """
    agent, old = bin_dir / AGENT, bin_dir / OLD
    if state.current is None:
        return "no agent installed"
    if state.previous is None:
        return "no agent.old to roll back to"
    try:
        st_agent, st_old = os.lstat(agent), os.lstat(old)
    except FileNotFoundError:
        return (f"the journal names {state.previous.version} as the previous build, but "
                "bin/agent.old is gone")
    except OSError as exc:
        return f"cannot inspect bin/agent.old: {exc.strerror or exc}"
    if not (stat.S_ISREG(st_agent.st_mode) and stat.S_ISREG(st_old.st_mode)):
        return "bin/agent.old or bin/agent is not a regular file"
    if (st_agent.st_dev, st_agent.st_ino) == (st_old.st_dev, st_old.st_ino):
        return "bin/agent.old is the same file as bin/agent: nothing else to roll back to"
    try:
        agent_sha, old_sha = shas([agent, old])
    except (HostError, OSError) as exc:
        return f"cannot read bin/agent.old: {exc}"
    if agent_sha == old_sha or state.previous.sha256 == state.current.sha256:
        return (f"bin/agent.old is the same build as bin/agent ({state.current.label()}): "
                "nothing else to roll back to")
    return None


def recover(state: State, bin_dir: Path, shas: Hasher = file_shas) -> State:
    """Finish or undo whatever a killed launcher left half done; the files are the truth.

    Returns the repaired state; the caller journals it. Never raises for a missing file:
    an absent ``bin/agent`` yields phase ``empty`` so the launcher reinstalls. The rule for
    each phase is the table in ``launcher.journal``'s docstring.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    agent_sha, old_sha = shas([bin_dir / AGENT, bin_dir / OLD])
    keep = None

    if state.phase == "swapping" and state.staged is not None:
        new = state.staged.build
        if agent_sha == new.sha256:
            log.info("recovery: swap to %s had completed; its trial starts now", new.version)
            prev = state.current
            state = dataclasses.replace(
                state, phase="trial", current=new, previous=prev, staged=None,
                trial=_fresh_trial(new),
            )
        else:
            log.info("recovery: swap to %s was interrupted before the rename; abandoned "
                     "(the next check fetches it again)", new.version)
            state = dataclasses.replace(state, phase="committed", staged=None)

    if state.phase == "rolling_back" and state.rollback_to is not None:
        target = state.rollback_to
        if agent_sha != target.sha256 and old_sha == target.sha256:
            restore_previous(bin_dir)
            agent_sha, old_sha = target.sha256, None
        if agent_sha == target.sha256:
            log.info("recovery: rollback to %s completed", target.version)
            state = dataclasses.replace(
                state, phase="committed", current=target, previous=None, trial=None,
                rollback_to=None,
            )
        else:
            log.error("recovery: cannot complete rollback to %s: agent.old is gone",
                      target.version)
            state = dataclasses.replace(state, phase="committed", rollback_to=None, trial=None)

    clean_temp_files(bin_dir, keep)
    return _agree_with_files(state, bin_dir, agent_sha, old_sha)


def _agree_with_files(state: State, bin_dir: Path, agent_sha: str | None,
                      old_sha: str | None) -> State:
    """Make the journal agree with what ``bin/`` holds."""
    if agent_sha is None:
        if old_sha is not None:
            log.warning("recovery: bin/agent is missing; restoring bin/agent.old")
            restore_previous(bin_dir)
            prev = state.previous if state.previous and state.previous.sha256 == old_sha else None
            return dataclasses.replace(
                state, phase="committed" if prev else "empty", current=prev, previous=None,
                trial=None,
            )
        return dataclasses.replace(state, phase="empty", current=None, previous=None, trial=None)
    if state.current is None or state.current.sha256 != agent_sha:
        if state.trial is not None and state.trial.build.sha256 == agent_sha:
            state = dataclasses.replace(state, current=state.trial.build)
        elif state.previous is not None and state.previous.sha256 == agent_sha:
            log.warning("recovery: bin/agent is the previous build %s", state.previous.version)
            if state.phase == "trial" and state.current is not None:
                # Only a rollback puts the previous build back during a trial: its bad mark
                # was not written (disk full, read-only) or went with a torn journal.
                log.warning("recovery: %s was rolled back during its trial; marking it bad",
                            state.current.label())
                state = state.with_bad(state.current, "rolled back during its trial (mark "
                                       "re-derived at recovery)", utc_iso())
            state = dataclasses.replace(
                state, phase="committed", current=state.previous, previous=None, trial=None)
        else:
            log.warning("recovery: bin/agent (sha256 %s) is not the build the journal names; "
                        "treating it as installed, version unknown until it runs", agent_sha[:12])
            state = dataclasses.replace(
                state, phase="committed", current=Build("unknown", agent_sha), trial=None)
    if old_sha is None:
        state = dataclasses.replace(state, previous=None)
    elif state.previous is None or state.previous.sha256 != old_sha:
        if old_sha == agent_sha and state.current is not None:
            state = dataclasses.replace(state, previous=state.current)
        else:
            state = dataclasses.replace(state, previous=Build("unknown", old_sha))
    if state.phase == "empty":
        state = dataclasses.replace(state, phase="committed")
    return state


def _fresh_trial(build: Build) -> Trial:
    return Trial(build=build, started_at=utc_iso())
