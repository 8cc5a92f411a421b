"""Where a release directory keeps each channel and each version, and promotion between them.

    version.json                       the stable channel (what launchers poll by default)
    channels/NAME/version.json         channel NAME (``--channel NAME`` on the launcher)
    versions/VERSION/version.json      every release, for ``nginx-manager-launcher install``

each with its ``.minisig``. ``promote`` re-issues a published release for another channel
without rebuilding it: the manifest of ``versions/VERSION/`` with the new ``channel``, a
serial above the target channel's, a new expiry, signed; the binaries and their sha256 stay.

Used by ``release_tool.py`` (``promote`` is its subcommand); standard library only (signing
goes through minisign_tool.py). Mirrors ``launcher/layout.py``, which reads these paths.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshness import (
    DEFAULT_CHANNEL,
    FreshnessError,
    expires_at,
    freshness_options,
    next_serial,
    previous_serial,
    stamp,
)
from release_files import (
    MANIFEST_NAME,
    ReleaseError,
    load_sign_key,
    run_command,
    sign,
    write_atomically,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_channel(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ReleaseError(f"channel {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def channel_manifest(release_dir: Path, channel: str) -> Path:
    if check_channel(channel) == DEFAULT_CHANNEL:
        return Path(release_dir) / MANIFEST_NAME
    return Path(release_dir) / "channels" / channel / MANIFEST_NAME


def version_manifest(release_dir: Path, version: str) -> Path:
    return Path(release_dir) / "versions" / version / MANIFEST_NAME


def write_manifest(path: Path, body: bytes, signature: bytes | None) -> None:
    """The manifest, then its signature (or no stale one), each replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, [body], 0o644)
    sig = path.with_name(path.name + ".minisig")
    if signature is not None:
        write_atomically(sig, [signature], 0o644)
    else:
        sig.unlink(missing_ok=True)


def promote(version: str, release_dir: Path, to: str, *, sign_key: Path | None,
            from_channel: str | None = None, expires_in_days: float | None = 30.0,
            serial: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Publish the release ``version`` on channel ``to``; return the manifest written."""
    now = now or datetime.now(UTC)
    source = version_manifest(release_dir, version)
    try:
        document = json.loads(source.read_bytes())
    except OSError as exc:
        raise ReleaseError(f"no release {version} in {release_dir} ({source}: "
                           f"{exc.strerror or exc}): publish it first") from exc
    except ValueError as exc:
        raise ReleaseError(f"{source} is not a JSON manifest: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != version:
        raise ReleaseError(f"{source} is not the manifest of {version}")
    if from_channel is not None:
        current = _version_of(channel_manifest(release_dir, from_channel))
        if current != version:
            raise ReleaseError(f"channel {from_channel} serves {current or 'nothing'}, not "
                               f"{version}: nothing promoted")
    target = channel_manifest(release_dir, to)
    secret = load_sign_key(sign_key) if sign_key is not None else None
    try:
        stamped = stamp(document, serial=next_serial(previous_serial(target), now, serial),
                        expires=expires_at(now, expires_in_days), channel=to)
    except FreshnessError as exc:
        raise ReleaseError(str(exc)) from exc
    body = (json.dumps(stamped, indent=2) + "\n").encode()
    write_manifest(target, body, sign(body, secret) if secret is not None else None)
    return stamped


def _version_of(path: Path) -> str | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    version = document.get("version") if isinstance(document, dict) else None
    return version if isinstance(version, str) else None


def main_promote(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="release_tool.py promote",
        description="Publish a released VERSION on another channel, without rebuilding it.")
    parser.add_argument("version", metavar="VERSION")
    parser.add_argument("--to", required=True, metavar="CHANNEL", help="the channel to publish on")
    parser.add_argument("--from", dest="from_channel", metavar="CHANNEL",
                        help="refuse unless CHANNEL serves VERSION now")
    parser.add_argument("--release-dir", type=Path, default=Path("release"), metavar="DIR")
    parser.add_argument("--sign-key", type=Path, metavar="FILE",
                        help="unencrypted minisign secret key: also write the .minisig")
    freshness_options(parser)
    args = parser.parse_args(argv)
    manifest, code = run_command(lambda: promote(
        args.version, args.release_dir, args.to, sign_key=args.sign_key,
        from_channel=args.from_channel, serial=args.serial,
        expires_in_days=None if args.no_expires else args.expires_in))
    if manifest is None:
        return code
    print(f"promoted {args.version} to {args.to}: "
          f"{channel_manifest(args.release_dir, args.to)} serial={manifest['serial']} "
          f"expires={manifest.get('expires', 'never')}")
    return 0
