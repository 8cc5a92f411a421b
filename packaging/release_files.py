"""The release tool's file writing and signing: atomic, fsynced, signed in memory first.

Standard library only, except signing (``cryptography``, through minisign_tool.py), which is
imported only when a key is given.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 1 << 20
MANIFEST_NAME = "version.json"


class ReleaseError(Exception):
    """A release that cannot be published as asked (the caller's input is at fault)."""


def run_command(action: Callable[[], T],
                failures: tuple[type[BaseException], ...] = (OSError,)) -> tuple[T | None, int]:
    """A release command's result and exit status: 2 (and the error on stderr) when the
    input is at fault (:class:`ReleaseError`), 1 for one of ``failures``, else 0."""
    try:
        return action(), 0
    except ReleaseError as exc:
        print(f"release-local: error: {exc}", file=sys.stderr)
        return None, 2
    except failures as exc:
        print(f"release-local: error: {exc}", file=sys.stderr)
        return None, 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, chunks: Iterable[bytes], mode: int) -> tuple[str, int]:
    """Write ``chunks`` to ``target`` via a temporary file beside it; return sha256, size."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fp:
            for chunk in chunks:
                fp.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return digest.hexdigest(), size


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def load_sign_key(path: Path) -> Any:
    try:
        import minisign_tool  # needs cryptography: imported only when signing
    except ImportError as exc:
        raise ReleaseError(f"--sign-key needs the cryptography package ({exc}): run with "
                           "PYTHON=.venv/bin/python") from exc
    try:
        return minisign_tool.load_secret_key(Path(path))
    except minisign_tool.KeyFileError as exc:
        raise ReleaseError(f"--sign-key: {exc}") from exc


def sign(body: bytes, secret: Any) -> bytes:
    import minisign_tool

    comment = minisign_tool.default_trusted_comment(MANIFEST_NAME)
    text: str = minisign_tool.signature_text(body, secret, comment)
    return text.encode()
