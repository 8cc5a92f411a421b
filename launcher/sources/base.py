"""What every manifest source returns: the body, or "not modified", and the validators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Validators:
    """Cache validators of an accepted manifest, sent back on the next conditional fetch."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return self.etag is not None or self.last_modified is not None


@dataclass(frozen=True)
class FetchResult:
    """``not_modified`` with no body, or the manifest bytes; and the validators to keep."""

    not_modified: bool
    body: bytes | None
    validators: Validators


class Source(Protocol):
    """A place manifests come from."""

    def fetch(self, validators: Validators | None) -> FetchResult: ...

    def fetch_signature(self, max_bytes: int) -> bytes:
        """The manifest's detached minisign signature, read up to ``max_bytes``.

        Asked for right after a full ``fetch`` when public keys are configured; a missing
        one raises SignatureError.
        """
        ...
