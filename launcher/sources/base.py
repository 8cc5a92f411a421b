"""What every manifest source returns: the body, or "not modified", and the validators."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from launcher.manifest import Binary, Delta


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


@runtime_checkable
class CarriesBinaries(Protocol):
    """A source whose builds live in it (an OCI artifact), not at the manifest's URLs."""

    def stage_binary(self, binary: Binary, platform: str, dest_dir: Path,
                     s: Mapping[str, Any], *, version: str | None = None,
                     deadline_s: float | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The build for ``platform`` in a temp file in ``dest_dir``, checked against
        ``binary`` (the signed sha256 and size) within ``deadline_s`` (default
        ``--download-deadline``); a download in flight is reported in
        ``state_dir/transfer.json`` as ``version``'s, and the partials of ``keep`` (the
        release's other files) are left for the next check."""
        ...


@runtime_checkable
class CarriesPatches(CarriesBinaries, Protocol):
    """One whose patches are worth using too: a registry, not a copy on local disk (an
    offline bundle's full build is copied faster than a patch is applied)."""

    def stage_patch(self, binary: Binary, delta: Delta, platform: str, dest_dir: Path,
                    s: Mapping[str, Any], *, version: str | None = None,
                    deadline_s: float | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The signed patch ``delta`` of ``binary``, staged as the build is."""
        ...
