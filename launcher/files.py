"""Files that survive a kill at any instant: atomic writes, links or their copies, modes.

A reader sees either the old or the new bytes, never a mix (temp file, fsync, rename, fsync
of the directory). Filesystems without hard links or modes (vfat, exFAT, many FUSE mounts)
get a fsynced copy where a link would be used, and a chmod they cannot do is tolerated when
the execute bits asked for are there already. Files are read without following symlinks.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO


def read_nofollow(path: Path) -> bytes:
    """The file's bytes; a symlink at ``path`` is refused (``permissions.open_nofollow``)."""
    from launcher.permissions import open_nofollow

    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (symlinks to one followed);
    OSError otherwise. A FIFO or device planted where a release file should be would block
    ``open`` or never end: opened without blocking, and refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What link(2) and chmod(2) answer on filesystems that have no hard links or no modes.
UNSUPPORTED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def set_mode(path: Path | str, mode: int) -> None:
    """chmod, tolerated where the filesystem has no modes (vfat) as long as the execute
    bits asked for are there already."""
    try:
        os.chmod(path, mode)
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
        if os.stat(path).st_mode & mode & 0o111 != mode & 0o111:
            raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` (a new name) hold what ``src`` holds: a hard link, or where the
    filesystem has none, a copy that is on disk (fsynced) before this returns."""
    try:
        os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
    with src.open("rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    set_mode(dst, os.stat(src).st_mode & 0o7777)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a reader sees either the old or the new bytes, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        set_mode(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
