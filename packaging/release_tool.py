#!/usr/bin/env python3
"""Publish an agent release into a directory an update server serves.

    python3 packaging/release_tool.py VERSION [--binary FILE] [--release-dir DIR]
                                              [--base-url URL]

Without ``--binary`` the agent is built for VERSION (``build_agent.py``); with it, FILE
is published as it is, whatever it holds. The order is what keeps clients safe:

1. the binaries, under versioned paths ``bin/VERSION/agent-linux-{amd64,arm64}``, each
   written to a temporary file beside its target, fsynced, made executable and renamed;
2. then ``version.json``, replaced atomically (temporary file, fsync, ``os.replace``,
   fsync of the directory), so a client never sees a manifest naming a missing binary.

Exit codes: 0 published; 2 bad arguments (version, missing binary); 1 anything else.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_agent import build_agent  # the sibling script, found via the path above

PLATFORMS = ("linux-amd64", "linux-arm64")
DEFAULT_RELEASE_DIR = Path("release")
DEFAULT_BASE_URL = "http://127.0.0.1:8090"
MANIFEST_NAME = "version.json"
CHUNK = 1 << 20

# PEP 440 public versions in canonical form (no "v" prefix, no local part, no
# alternative spellings): the version also names a directory and a URL path.
_CANONICAL_VERSION = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
    r"((a|b|rc)(0|[1-9][0-9]*))?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?$"
)


class ReleaseError(Exception):
    """A release that cannot be published as asked (the caller's input is at fault)."""


def check_version(version: str) -> str:
    if not _CANONICAL_VERSION.match(version):
        raise ReleaseError(
            f"version {version!r} is not a canonical PEP 440 public version (e.g. 0.1.2, "
            "1.0rc1, 2.0.post1)"
        )
    return version


def format_release_date(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("release_date must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(target: Path, chunks: Iterable[bytes], mode: int) -> tuple[str, int]:
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
    _fsync_dir(target.parent)
    return digest.hexdigest(), size


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def build_manifest(
    version: str, base_url: str, release_date: str, files: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    """The manifest for ``files`` (platform to sha256 and size): the seed's format + size."""
    base = base_url.rstrip("/")
    return {
        "version": version,
        "release_date": release_date,
        "binaries": {
            platform: {
                "url": f"{base}/bin/{version}/agent-{platform}",
                "sha256": sha256,
                "size": size,
            }
            for platform, (sha256, size) in files.items()
        },
    }


def publish(
    version: str,
    release_dir: Path,
    base_url: str,
    binary: Path | None = None,
    release_date: datetime | None = None,
) -> dict[str, Any]:
    """Publish ``version`` into ``release_dir``; return the manifest written."""
    check_version(version)
    if not base_url.startswith(("http://", "https://")):
        raise ReleaseError(f"base URL {base_url!r} must start with http:// or https://")
    if binary is not None and not Path(binary).is_file():
        raise ReleaseError(f"--binary {binary}: no such file")
    release_dir = Path(release_dir)
    bin_dir = release_dir / "bin" / version
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="release-") as scratch:
        source = build_agent(version, Path(scratch) / "agent") if binary is None else Path(binary)
        files = {
            platform: _write_atomically(bin_dir / f"agent-{platform}", _read_chunks(source), 0o755)
            for platform in PLATFORMS
        }
    _fsync_dir(bin_dir.parent)
    date = format_release_date(release_date or datetime.now(UTC))
    manifest = build_manifest(version, base_url, date, files)
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    _write_atomically(release_dir / MANIFEST_NAME, [body], 0o644)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="release-local.sh", description="Build (or take) the agent and publish it."
    )
    parser.add_argument("version", metavar="VERSION")
    parser.add_argument("--binary", type=Path, metavar="FILE", help="publish FILE as is")
    parser.add_argument("--release-dir", type=Path, default=DEFAULT_RELEASE_DIR, metavar="DIR")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL")
    args = parser.parse_args(argv)
    release_dir: Path = args.release_dir
    try:
        manifest = publish(args.version, release_dir, args.base_url, binary=args.binary)
    except ReleaseError as exc:
        print(f"release-local: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"release-local: error: {exc}", file=sys.stderr)
        return 1
    for platform, entry in manifest["binaries"].items():
        path = release_dir / "bin" / args.version / f"agent-{platform}"
        print(f"published {path} sha256={entry['sha256']} size={entry['size']}")
    print(f"published {release_dir / MANIFEST_NAME} version={args.version} ({args.base_url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
