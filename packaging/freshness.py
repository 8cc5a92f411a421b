"""The fields that place a signed manifest in time, and re-issuing one without a new build.

    serial    an integer that only grows (below 2^63). By default the Unix time of signing,
              and always above the serial of the manifest it replaces: so a release signed
              with a new key after a rotation still ranks above everything the old key
              signed honestly, and a serial bounds when it was made.
    expires   RFC 3339, by default 30 days after signing: a launcher refuses an expired
              manifest, also when its server keeps answering 304, so a frozen mirror shows
              as ``expired:`` instead of silence. Re-sign before it passes (``resign``).
    product   ``nginx-manager-agent``; ``channel`` (default ``stable``).

``resign`` re-issues an existing ``version.json`` with a new expiry and a higher serial,
signs it and, in a GitHub asset set, updates the ``version.json`` line of ``SHA256SUMS``.
Used by ``release_tool.py`` (``resign`` is its subcommand); standard library only (signing
goes through minisign_tool.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from release_files import (
    MANIFEST_NAME,
    ReleaseError,
    load_sign_key,
    run_command,
    sign,
    write_atomically,
)

PRODUCT = "nginx-manager-agent"
DEFAULT_CHANNEL = "stable"
DEFAULT_EXPIRES_DAYS = 30.0
SERIAL_LIMIT = 1 << 63


class FreshnessError(Exception):
    """A serial or expiry that cannot be written as asked (the caller's input is at fault)."""


def previous_serial(manifest: Path) -> int | None:
    """The serial of the manifest at ``manifest`` (the one about to be replaced), if any."""
    try:
        document = json.loads(manifest.read_bytes())
    except (OSError, ValueError):
        return None
    serial = document.get("serial") if isinstance(document, dict) else None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


def next_serial(previous: int | None, now: datetime, asked: int | None = None) -> int:
    """``asked``, or the Unix time of ``now``; always above ``previous``."""
    serial = asked if asked is not None else int(now.timestamp())
    if asked is None and previous is not None:
        serial = max(serial, previous + 1)
    if previous is not None and serial <= previous:
        raise FreshnessError(f"--serial {serial} is not above the published serial {previous}: "
                             "launchers that saw it would refuse this release as a replay")
    if not 0 <= serial < SERIAL_LIMIT:
        raise FreshnessError(f"serial {serial} is outside 0 .. 2^63 - 1")
    return serial


def expires_at(now: datetime, days: float | None) -> str | None:
    """``now`` + ``days`` as RFC 3339 UTC, or None (``--no-expires``)."""
    if days is None:
        return None
    if not days > 0:
        raise FreshnessError(f"--expires-in {days:g}: give a positive number of days")
    return (now + timedelta(days=days)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(manifest: dict[str, Any], *, serial: int, expires: str | None,
          channel: str = DEFAULT_CHANNEL) -> dict[str, Any]:
    """``manifest`` with product, channel, serial and expires set (expires dropped if None)."""
    stamped = {**manifest, "product": PRODUCT, "channel": channel, "serial": serial}
    stamped.pop("expires", None)
    if expires is not None:
        stamped["expires"] = expires
    return stamped


def resign(
    manifest_path: Path,
    sign: Callable[[bytes], bytes],
    write: Callable[[Path, bytes], None],
    *,
    now: datetime,
    expires_in_days: float | None = DEFAULT_EXPIRES_DAYS,
    serial: int | None = None,
) -> dict[str, Any]:
    """Re-issue ``manifest_path`` with a new expiry and serial, signed; return it.

    The signature is made before anything is written; the manifest is replaced first and
    its ``.minisig`` right after (a launcher that reads the pair in between refuses it once
    and takes it on the next poll); ``SHA256SUMS`` beside it, if it lists the manifest, last.
    """
    try:
        document = json.loads(manifest_path.read_bytes())
    except OSError as exc:
        raise FreshnessError(f"cannot read {manifest_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise FreshnessError(f"{manifest_path} is not a JSON manifest: {exc}") from exc
    if not isinstance(document, dict) or "version" not in document:
        raise FreshnessError(f"{manifest_path} is not a release manifest")
    old = document.get("serial")
    previous = old if isinstance(old, int) and not isinstance(old, bool) else None
    stamped = stamp(document, serial=next_serial(previous, now, serial),
                    expires=expires_at(now, expires_in_days),
                    channel=str(document.get("channel") or DEFAULT_CHANNEL))
    body = (json.dumps(stamped, indent=2) + "\n").encode()
    signature = sign(body)
    write(manifest_path, body)
    write(manifest_path.with_name(manifest_path.name + ".minisig"), signature)
    sums = manifest_path.with_name("SHA256SUMS")
    if sums.exists():
        import hashlib

        lines = sums.read_text().splitlines()
        digest = hashlib.sha256(body).hexdigest()
        updated = [f"{digest}  {manifest_path.name}"
                   if line.split(maxsplit=1)[1:] == [manifest_path.name] else line
                   for line in lines]
        if updated != lines:
            write(sums, ("\n".join(updated) + "\n").encode())
    return stamped


def resign_manifest(manifest: Path, sign_key: Path, *,
                    expires_in_days: float | None = DEFAULT_EXPIRES_DAYS,
                    serial: int | None = None) -> dict[str, Any]:
    """Re-issue a published manifest with a new expiry and serial (see :func:`resign`)."""
    secret = load_sign_key(sign_key)

    def write(path: Path, data: bytes) -> None:
        write_atomically(path, [data], 0o644)

    try:
        return resign(manifest, lambda body: sign(body, secret), write, now=datetime.now(UTC),
                      expires_in_days=expires_in_days, serial=serial)
    except FreshnessError as exc:
        raise ReleaseError(str(exc)) from exc


def freshness_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--expires-in", type=float, default=DEFAULT_EXPIRES_DAYS, metavar="DAYS",
                       help=f"the manifest expires DAYS after signing (default "
                            f"{DEFAULT_EXPIRES_DAYS:g})")
    group.add_argument("--no-expires", action="store_true",
                       help="write no expiry (a frozen mirror then goes unnoticed)")
    parser.add_argument("--serial", type=int, metavar="N",
                        help="the manifest's serial (default: the Unix time, above the last)")


def main_resign(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="release_tool.py resign",
        description="Re-issue the published manifest with a new expiry and a higher serial.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--release-dir", type=Path, default=Path("release"), metavar="DIR")
    where.add_argument("--manifest", type=Path, metavar="FILE",
                       help="the version.json to re-issue (e.g. in a GitHub asset set)")
    parser.add_argument("--sign-key", type=Path, metavar="FILE", required=True,
                        help="unencrypted minisign secret key")
    freshness_options(parser)
    args = parser.parse_args(argv)
    manifest_path: Path = args.manifest or args.release_dir / MANIFEST_NAME
    manifest, code = run_command(lambda: resign_manifest(
        manifest_path, args.sign_key, serial=args.serial,
        expires_in_days=None if args.no_expires else args.expires_in))
    if manifest is None:
        return code
    print(f"re-signed {manifest_path} version={manifest['version']} serial={manifest['serial']} "
          f"expires={manifest.get('expires', 'never')}")
    return 0
