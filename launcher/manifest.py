"""The release manifest (``version.json``): its model and its parsing.

The wire format is the seed's, plus optional ``size``, ``expires``, ``rollout`` and the
fields that tie a signed manifest to its place in time and to this product: ``serial`` (an
integer that only grows, below 2^63), ``channel`` (default ``stable``) and ``product``.
Unknown fields are ignored so that newer servers do not break older launchers; a key given
twice, at any level, is refused, so no two JSON parsers can read different releases out of
the same signed bytes. pydantic and json errors are translated into :class:`ManifestError`
here, in :func:`parse_manifest`, with one line that names the field at fault.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

from packaging.version import InvalidVersion, Version
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from launcher.errors import ExpiredError, ManifestError

logger = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_ERROR = "manifest_version"
MAX_DELTAS = 32


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def _absolute_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http", "file", "oci"):
        raise ValueError("must be an https:// (or http://, file://) URL, or oci:sha256:HEX "
                         "in an OCI release")
    return value


def _sha256_hex(value: str) -> str:
    normalised = value.lower()
    if not _SHA256_RE.fullmatch(normalised):
        raise ValueError("must be 64 hexadecimal characters")
    return normalised


class Delta(_Model):
    """A patch that rebuilds the platform's build from the build whose sha256 is
    ``from_sha256`` (see ``launcher.delta``); ``size`` and ``sha256`` are the patch's own."""

    from_sha256: str
    url: Annotated[str, Field(min_length=1)]
    sha256: str
    size: Annotated[int, Field(gt=0, strict=True)]
    format: Annotated[str, Field(min_length=1, max_length=64)]

    _url = field_validator("url")(_absolute_url)
    _hex = field_validator("sha256", "from_sha256")(_sha256_hex)


class Binary(_Model):
    """One platform's build: where to fetch it, its digest and, optionally, its size and
    patches from earlier builds (``deltas``)."""

    url: Annotated[str, Field(min_length=1)]
    sha256: str
    size: Annotated[int | None, Field(default=None, gt=0, strict=True)] = None
    deltas: Annotated[tuple[Delta, ...], Field(max_length=MAX_DELTAS)] = ()

    _url = field_validator("url")(_absolute_url)
    _hex = field_validator("sha256")(_sha256_hex)


class Rollout(_Model):
    """A staged rollout: only hosts whose cohort is below ``percent`` take the release."""

    percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class Manifest(_Model):
    """A release: its version and one binary per platform."""

    version: str
    release_date: str | None = None
    binaries: dict[str, Binary]
    expires: AwareDatetime | None = None
    rollout: Rollout | None = None
    serial: Annotated[int | None, Field(default=None, ge=0, lt=1 << 63, strict=True)] = None
    channel: Annotated[str, Field(min_length=1, max_length=64)] = "stable"
    product: Annotated[str | None, Field(default=None, min_length=1, max_length=128)] = None

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise PydanticCustomError(
                _VERSION_ERROR,
                "manifest version {version} is not a valid version",
                {"version": repr(value)},
            ) from None
        return value

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    def binary_for(self, platform: str) -> Binary:
        try:
            return self.binaries[platform]
        except KeyError:
            have = ", ".join(sorted(self.binaries)) or "none"
            raise ManifestError(
                f"manifest has no binary for platform {platform} (has: {have})"
            ) from None


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; every problem becomes a one-line ManifestError."""
    try:
        document = json.loads(data, parse_constant=_refuse_constant,
                              object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise ManifestError(f"manifest is refused: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest is not valid UTF-8 text: {exc.reason}") from exc
    except ValueError as exc:  # NaN / Infinity, refused by _refuse_constant
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError("manifest is not valid JSON: nested too deeply") from exc
    if not isinstance(document, dict):
        raise ManifestError(f"manifest is not a JSON object (got {type(document).__name__})")
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(_describe(exc)) from exc


def check_not_expired(manifest: Manifest, now: datetime) -> None:
    """Refuse a manifest whose ``expires`` is at or before ``now`` (naive ``now`` is UTC)."""
    if manifest.expires is None:
        return
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if now >= manifest.expires:
        raise ExpiredError(
            f"manifest {manifest.version} expired at {_rfc3339(manifest.expires)}"
            f" (now {_rfc3339(now)})"
        )


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        document[key] = value
    return document


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return _describe_one(first) + more


def _describe_one(error: ErrorDetails) -> str:
    if error["type"] == _VERSION_ERROR:
        return error["msg"]
    message = error["msg"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if error["type"] == "value_error" and "error" in ctx:
        message = str(ctx["error"])
    location = ".".join(str(part) for part in error["loc"])
    return f"manifest field '{location}': {message}"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
