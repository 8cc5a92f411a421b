"""An offline bundle: an OCI image layout directory (``--manifest-url file:///DIR``).

``DIR/oci-layout``, ``DIR/index.json`` and ``DIR/blobs/sha256/<hex>``, as the release tool
writes it (``--oci-layout DIR``) and as ``skopeo copy ... oci:DIR:TAG`` does. ``index.json``
names the release: its only entry, or the one whose ``org.opencontainers.image.ref.name``
is the configured channel. From there the release is read exactly as from a registry (see
``oci``): every blob checked against its digest, the build against the signed manifest.
The validator is the release index's digest, so an unchanged bundle costs one small read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import ManifestError, SourceError, TransportError
from launcher.files import open_regular
from launcher.sources import artifact
from launcher.sources.base import FetchResult, Validators
from launcher.sources.oci import ArtifactReader

if TYPE_CHECKING:
    from launcher.manifest import Binary

logger = logging.getLogger(__name__)


class LayoutSource(ArtifactReader):
    def __init__(self, root: Path, *, channel: str = "stable") -> None:
        self.root = root
        self.where = f"OCI layout {root}"
        self.channel = channel

    def fetch(self, validators: Validators | None) -> FetchResult:
        entry = self._entry(self._read(self.root / "index.json", artifact.MAX_DOCUMENT_BYTES,
                                       ManifestError(f"{self.root}/index.json is too large")))
        current = Validators(etag=f'"{entry.digest}"')
        if validators is not None and validators.etag == current.etag:
            logger.debug("%s not modified", self.where)
            return FetchResult(not_modified=True, body=None, validators=current)
        index = self._document(entry, f"release index {entry.digest}")
        return FetchResult(not_modified=False, body=self._signed_manifest(index, entry.digest),
                           validators=current)

    def _entry(self, body: bytes) -> artifact.Descriptor:
        entries = artifact.load_document(body, f"{self.root}/index.json").get("manifests")
        if not isinstance(entries, list) or not entries:
            raise ManifestError(f"{self.root}/index.json is not an OCI index with an entry")
        named = [e for e in entries if isinstance(e, dict) and _ref_name(e) == self.channel]
        if len(entries) != 1 and len(named) != 1:
            raise ManifestError(f"{self.root}/index.json lists {len(entries)} entries and "
                                f"none (or several) named {self.channel!r}: an offline bundle "
                                "holds one release, or one per channel name")
        chosen = named[0] if len(named) == 1 else entries[0]
        if not isinstance(chosen, dict):
            raise ManifestError(f"{self.root}/index.json: an entry is not an object")
        return artifact.descriptor(chosen, f"{self.root}/index.json")

    def _path(self, descriptor: artifact.Descriptor) -> Path:
        return self.root / "blobs" / "sha256" / descriptor.hex

    def _document(self, descriptor: artifact.Descriptor, what: str) -> bytes:
        return self._blob(descriptor, artifact.MAX_DOCUMENT_BYTES, what,
                          ManifestError(f"{what} in {self.where} is too large"))

    def _blob(self, descriptor: artifact.Descriptor, limit: int, what: str,
              too_large: SourceError) -> bytes:
        body = self._read(self._path(descriptor), limit, too_large)
        return artifact.check_digest(body, descriptor.digest, f"{what} in {self.where}")

    def _read(self, path: Path, limit: int, too_large: SourceError) -> bytes:
        try:
            with open_regular(path) as file:
                body = file.read(limit + 1)
        except OSError as exc:
            raise TransportError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(body) > limit:
            raise too_large
        return body

    def stage_binary(self, binary: Binary, platform: str, dest_dir: Path,
                     s: Mapping[str, Any], *, version: str | None = None,
                     deadline_s: float | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The build copied from the bundle (its patches are never used: a local copy costs
        less than a rebuild, see ``base.CarriesPatches``)."""
        from launcher import download

        layer = self.binary_layer(binary, platform)
        return download.copy_local(self._path(layer), dest_dir, expected_sha256=binary.sha256,
                                   expected_size=binary.size,
                                   max_bytes=int(s["max_binary_bytes"]))


def _ref_name(entry: dict[str, Any]) -> object:
    annotations = entry.get("annotations")
    return annotations.get(artifact.REF_NAME) if isinstance(annotations, dict) else None
