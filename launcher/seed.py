"""The seed binary (the image's or the package's build) and builds whose version is unknown.

Both ask a binary ``--version`` and hash files in short-lived processes: the resident
loads neither ``packaging`` nor OpenSSL. Each function returns the new state; the caller
journals it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from launcher import install
from launcher.errors import ConfigError, HostError
from launcher.journal import Build, State

log = logging.getLogger(__name__)

# (argv) -> (exit code, stdout): runs a binary's --version without the launcher's secrets.
RunVersion = Callable[[list[str]], tuple[int, str]]
Compare = Callable[[str, str], "int | None"]


def install_seed(state: State, seed: Path, bin_dir: Path, shas: install.Hasher,
                 run: RunVersion, compare: Compare) -> State:
    """Install the seed when the state dir has none, or an older build.

    Idempotent: the same build is never copied twice, and a newer build staged on the
    volume by an earlier update is kept. A build on trial is left to its trial.
    """
    current = state.current
    (seed_sha,) = shas([seed])
    if seed_sha is None:
        raise ConfigError(f"--seed-binary {seed} does not exist")
    if current is not None and (current.sha256 == seed_sha or state.phase == "trial"):
        return state
    code, out = run([str(seed), "--version"])
    version = out.strip()
    if code != 0 or not version:
        raise ConfigError(f"--seed-binary {seed}: '--version' exited {code} and printed "
                          f"{version!r}; give a working agent build")
    if current is not None and current.version != "unknown":
        order = compare(version, current.version)
        if order is None or order <= 0:
            log.info("keeping %s from the state dir (seed is %s)", current.version, version)
            return state
        log.info("seed binary %s is newer than the installed %s: installing it", version,
                 current.version)
    name = install.stage_copy(bin_dir, seed)
    (sha,) = shas([bin_dir / name])
    if sha != seed_sha:
        (bin_dir / name).unlink(missing_ok=True)
        raise HostError(f"copy of {seed} does not match its sha256; disk problem?")
    if current is None:
        os.replace(bin_dir / name, bin_dir / install.AGENT)
        previous = state.previous
    else:
        install.swap_in(bin_dir, name)
        previous = current if current.version != "unknown" else None
    log.info("installed seed binary %s as %s", seed, version)
    return dataclasses.replace(state, phase="committed", current=Build(version, sha),
                               previous=previous)


def learn_version(state: State, agent: Path, run: RunVersion) -> State:
    """Ask an installed build of unknown version for it (``--version``)."""
    assert state.current is not None
    try:
        code, out = run([str(agent), "--version"])
    except OSError:
        return state
    if code != 0 or not out.strip():
        return state
    return dataclasses.replace(state, current=Build(out.strip(), state.current.sha256))
