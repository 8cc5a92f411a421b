"""What an accepted manifest may be followed by: rollback, fast-forward, freeze, wrong software.

Pure decisions over values (no I/O, no clock of their own), in the spirit of python-tuf's
``trusted_metadata_set``: the worker calls them between parsing a verified manifest and
acting on it, and the journal keeps their memory in ``state.json`` under ``extra.trust``::

    {"serials":  {"<KEY ID>": 1767225600, ...},   highest serial accepted per signing key
                                                   ("unsigned" when signatures are off)
     "accepted": {"version", "serial", "expires", "key", "at"}}   the last manifest accepted

- **Rollback.** A manifest's ``serial`` must not be below the *floor*: the highest serial
  accepted from any key still trusted, and ``--min-serial`` (the floor the image or package
  was built with), whichever is higher. Equal is accepted: it is the same release fetched
  again. With signatures required, a manifest without a serial is refused once a floor
  exists (an old release from before serials cannot be replayed past a newer one).
- **Fast-forward.** Floors are kept per key id, and only the keys configured now count: a
  key that signed an absurd serial stops holding the fleet back the moment it is dropped
  from the configuration (which its compromise demands anyway). Serials are below 2^63.
- **Freeze.** The accepted manifest's ``expires`` is checked again on every poll, also when
  the source answers "not modified", so a mirror that answers 304 for ever cannot keep a
  host on an expired release without it saying so.
- **Wrong software.** ``product`` (when the manifest names one) and ``channel`` (default
  ``stable``) must be the configured ones.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from launcher.errors import ExpiredError, ManifestError, RollbackError

if TYPE_CHECKING:  # the worker imports this module before it needs pydantic
    from launcher.manifest import Manifest

PRODUCT = "nginx-manager-agent"
UNSIGNED = "unsigned"  # the serial bucket of manifests taken with --allow-unsigned


def floor(trust: Mapping[str, Any] | None, key_ids: Collection[str],
          min_serial: int | None) -> int | None:
    """The lowest serial acceptable now, or None when nothing bounds it yet."""
    serials = _mapping((trust or {}).get("serials"))
    found = [value for key, value in serials.items() if key in key_ids and _is_int(value)]
    if min_serial is not None:
        found.append(min_serial)
    return max(found, default=None)


def check_serial(manifest: Manifest, floor_serial: int | None, *, required: bool) -> None:
    """Refuse a manifest older than the floor (a replay), or without a serial past one."""
    if manifest.serial is None:
        if floor_serial is not None and required:
            raise RollbackError(
                f"manifest {manifest.version} has no serial, but this host already accepted "
                f"serial {floor_serial} (or has it as its floor): an old release replayed?")
        return
    if floor_serial is not None and manifest.serial < floor_serial:
        raise RollbackError(
            f"manifest {manifest.version} has serial {manifest.serial}, below {floor_serial} "
            "already accepted: an older signed release is being replayed")


def check_identity(manifest: Manifest, *, channel: str, product: str = PRODUCT) -> None:
    """Refuse a manifest signed for another product or another channel."""
    if manifest.product is not None and manifest.product != product:
        raise ManifestError(f"manifest is for product {manifest.product!r}, not {product!r}")
    if manifest.channel != channel:
        raise ManifestError(f"manifest {manifest.version} is for channel {manifest.channel!r}, "
                            f"this launcher follows {channel!r} (--channel)")


def check_install(manifest: Manifest, version: str, floor_serial: int | None, *,
                  required: bool, product: str = PRODUCT) -> None:
    """``install VERSION``: the one exception to the serial floor (see docs/SECURITY.md).

    The manifest read from ``versions/VERSION/`` must be VERSION's and this product's; with
    signatures required and a floor in force it must carry a serial, which may be below the
    floor (that is what an older release's manifest has). The floor is neither lowered nor
    raised by it: the caller does not record the manifest as accepted. Any channel's release
    may be installed by name; the signed version is what the operator named.
    """
    from packaging.version import Version

    if manifest.product is not None and manifest.product != product:
        raise ManifestError(f"manifest is for product {manifest.product!r}, not {product!r}")
    if Version(manifest.version) != Version(version):
        raise ManifestError(f"the manifest for {version} is signed for version "
                            f"{manifest.version}")
    if manifest.serial is None and floor_serial is not None and required:
        raise RollbackError(f"manifest {manifest.version} has no serial, but this host "
                            f"already accepted serial {floor_serial}")


def accepted(trust: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The record of the last accepted manifest (empty when none is known)."""
    return _mapping((trust or {}).get("accepted"))


def check_still_fresh(trust: Mapping[str, Any] | None, now: datetime) -> None:
    """On a "not modified" answer: the manifest accepted earlier must not have expired."""
    record = accepted(trust)
    expires = expiry(record)
    if expires is not None and _aware(now) >= expires:
        raise ExpiredError(
            f"manifest {record.get('version')} accepted earlier expired at "
            f"{rfc3339(expires)} (now {rfc3339(now)}) and the source still answers 'not "
            "modified': the release is not being re-signed, or a mirror is replaying it")


def record(manifest: Manifest, key: str) -> dict[str, Any]:
    """What the worker reports of an accepted manifest (the resident journals it)."""
    return {"version": manifest.version, "serial": manifest.serial, "key": key,
            "expires": rfc3339(manifest.expires) if manifest.expires else None}


def expiry(record_: Mapping[str, Any]) -> datetime | None:
    text = record_.get("expires")
    if not isinstance(text, str):
        return None
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError:
        return None


def rfc3339(moment: datetime) -> str:
    return _aware(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
