"""The local surface: who may touch the state dir, and the private directory inside it.

Whoever can write ``bin/`` runs code as the agent's user on every start, and whoever can
hold ``launcher.lock`` can keep the launcher from starting. So:

- The state dir and ``bin/`` must belong to the launcher's user (or root) and be writable
  by no one else; otherwise the launcher refuses to start and says why. In container mode
  the state dir is the pod's own volume, whose mount point the kubelet makes (root-owned,
  0777 with an fsGroup): only ``bin/`` and ``run/``, which the launcher makes itself, are
  held to the rule there.
- The lock and the control socket live in ``run/``, a directory only the launcher's user
  can enter (0700), so no other local user can flock the lock (a start refused for good
  under ``RestartPreventExitStatus=2``) or connect to the socket.
- Files in it (the lock, the journal) are opened without following symlinks; a directory
  reached through a symlink is judged by what it points at.
- An offline command run as root gives what it wrote back to the state dir's owner, so the
  service can still write it afterwards.
- The resident is not dumpable: the agent, running as the same user, cannot read the
  launcher's environment (source credentials) from ``/proc`` or attach to it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from launcher.errors import ConfigError

RUN_DIR = "run"


def private_dir(state_dir: Path) -> Path:
    """``<state_dir>/run``, made 0700 if missing; refused if it is not ours alone."""
    path = state_dir / RUN_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    check_dir(path, "the launcher's private directory")
    return path


def check_dir(path: Path, what: str, *, loose_ok: bool = False) -> None:
    """Refuse ``path`` unless it is a real directory owned by us (or root) that nobody else
    can write. ``loose_ok`` skips the owner and mode rule (a pod's own volume)."""
    try:
        st = os.stat(path)  # a symlinked state dir (moved to a bigger disk) is judged by its target
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot inspect {what} {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory; give a directory")
    if loose_ok:
        return
    me = os.geteuid()
    if me != 0 and st.st_uid not in (me, 0):  # root (an operator's command) trusts any owner
        raise ConfigError(f"{what} {path} belongs to uid {st.st_uid}, not to the launcher's "
                          f"user (uid {me}): another user could replace the agent; "
                          f"chown it to uid {me}")
    if st.st_mode & 0o022:
        raise ConfigError(f"{what} {path} is writable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}): another user could replace the "
                          f"agent; chmod go-w {path}")


def check_state_dir(state_dir: Path, bin_dir: Path, *, container: bool) -> None:
    check_dir(state_dir, "state dir", loose_ok=container)
    check_dir(bin_dir, "bin/")


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink at ``path`` (ELOOP becomes a clear error)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise ConfigError(f"{path} is a symlink; the launcher does not follow symlinks "
                              "in its state dir") from exc
        raise


PR_SET_DUMPABLE = 4


def not_dumpable() -> bool:
    """No core dumps, no ptrace, and ``/proc/<pid>/environ`` owned by root. True if set."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def give_back(state_dir: Path, paths: list[Path]) -> None:
    """Run as root on a state dir that belongs to another user: hand what we wrote back."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(state_dir)
    except OSError:
        return
    if owner.st_uid == 0:
        return
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.chown(p, owner.st_uid, owner.st_gid, follow_symlinks=False)


def check_secret_file(path: Path, what: str) -> None:
    """Refuse a credentials file another user could read or replace: it must be a regular
    file (not a symlink), owned by us or root, with no group or other permissions."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:  # an embedded NUL
        raise ConfigError(f"{what} {path!r}: not a usable path: {exc}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file (symlinks are refused)")
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise ConfigError(f"{what} {path} belongs to uid {st.st_uid}, not to the launcher's "
                          f"user (uid {me}) or root: chown it")
    if st.st_mode & 0o077:
        raise ConfigError(f"{what} {path} can be read or written by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} {path} is not readable by the launcher's user (uid {me}): "
                          f"chown it to uid {me}")
