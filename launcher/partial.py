"""What an unfinished download leaves beside the target, so that the next check resumes it.

A partial is ``bin/.agent.partial-<sha256 prefix>`` (the bytes received, mode 0600) and
``bin/.agent.partial-<sha256 prefix>.json`` (the URL, or for an OCI blob ``oci:<digest>``
whichever host serves it, the expected sha256 and size, the
response's ETag and Last-Modified, and when it was saved). The record is written as soon as a
response's validators are known, so a worker killed mid-transfer leaves a resumable pair too.
It is resumed only by a download of the same URL for the same sha256 and size, within
``MAX_AGE_S`` of being saved; any other download removes it (the release changed) unless it
is of the same release (a patch and the full build it rebuilds: ``also``), and so does a
finished one. Standard library only: the resident's temp-file sweep leaves these alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import HostError

log = logging.getLogger("launcher.download")

PREFIX = ".agent.partial-"
MAX_AGE_S = 7 * 86400.0
_RECORD = ".json"


@dataclass(frozen=True)
class Validators:
    """What identifies the version of a file a server sent: ETag and Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validators:
        return cls(etag=headers.get("etag"), last_modified=headers.get("last-modified"))

    def if_range(self) -> str | None:
        """The value for ``If-Range``: a strong ETag, else Last-Modified (RFC 9110 13.1.5
        forbids a weak ETag there)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def name_for(sha256: str) -> str:
    return PREFIX + sha256[:32]


def open_slot(dest_dir: Path, sha256: str, url: str, size: int | None,
              also: Collection[str] = ()) -> tuple[int, Path, Validators | None]:
    """The partial for this build, opened read-write: (fd, path, its validators or None).

    None: nothing to resume (the file is new and empty). Every other partial in ``dest_dir``
    is removed first, except those of the sha256s in ``also`` (the same release's other
    files, so that a patch and its full build do not undo each other's progress).
    """
    name = name_for(sha256)
    prune(dest_dir, keep=name, also={name_for(other.lower()) for other in also})
    path = dest_dir / name
    saved = _read_record(dest_dir / (name + _RECORD), url, sha256, size)
    if saved is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            saved = None
        else:
            info = os.fstat(fd)
            if (not stat.S_ISREG(info.st_mode) or info.st_size == 0
                    or (size is not None and info.st_size > size)):
                os.close(fd)
                saved = None
            else:
                log.info("found %d bytes of %s from an earlier check", info.st_size, url)
                return fd, path, saved
    discard(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise HostError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return fd, path, None


def keep(path: Path, url: str, sha256: str, size: int | None, validators: Validators) -> None:
    """Record what ``path`` holds so that a later download resumes it (best effort)."""
    record = path.with_name(path.name + _RECORD)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = {"url": url, "sha256": sha256, "size": size, "etag": validators.etag,
            "last_modified": validators.last_modified, "saved": time.time()}
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, record)
    except OSError as exc:
        log.warning("cannot keep the partial download %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def discard(path: Path) -> None:
    for p in (path, path.with_name(path.name + _RECORD)):
        with contextlib.suppress(OSError):  # gone, or a read-only directory: nothing to do
            p.unlink()


def done(path: Path) -> None:
    """The download finished: ``path`` is the build now, its record goes."""
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + _RECORD).unlink()


def prune(dest_dir: Path, keep: str | None = None,
          also: Collection[str] = ()) -> list[str]:
    """Remove every partial (and stray record) except ``keep``'s and ``also``'s; their
    names."""
    removed = []
    for p in dest_dir.glob(PREFIX + "*"):
        if p.name[: len(PREFIX) + 32] != keep and p.name[: len(PREFIX) + 32] not in also:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p.name)
    if removed:
        log.info("removed partial downloads of another build: %s", ", ".join(sorted(removed)))
    return removed


def _read_record(record: Path, url: str, sha256: str, size: int | None) -> Validators | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    saved = data.get("saved")
    if (data.get("url") != url or data.get("sha256") != sha256 or data.get("size") != size
            or not isinstance(saved, int | float) or time.time() - saved > MAX_AGE_S):
        return None
    etag, modified = data.get("etag"), data.get("last_modified")
    return Validators(etag=etag if isinstance(etag, str) else None,
                      last_modified=modified if isinstance(modified, str) else None)
