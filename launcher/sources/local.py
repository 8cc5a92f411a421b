"""The manifest in a local file (a ``file://`` URL or a mounted release directory).

The validator is the file's ``mtime_ns`` and size, carried as an ETag, so a poll of an
unchanged file reports "not modified" without reading it. A file that cannot be read is the
source's failure (:class:`TransportError`), like a server that does not answer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from launcher.errors import ConfigError, ManifestError, SignatureError, TransportError
from launcher.files import open_regular
from launcher.sources.base import FetchResult, Validators

logger = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024


class LocalSource:
    """A manifest file on this host, read up to a byte cap."""

    def __init__(self, path: Path | str, *, max_manifest_bytes: int = MAX_MANIFEST_BYTES) -> None:
        self.path = Path(path)
        self._max_bytes = max_manifest_bytes

    @classmethod
    def from_url(cls, url: str, *, max_manifest_bytes: int = MAX_MANIFEST_BYTES) -> LocalSource:
        """``file:///abs/path/version.json`` (or ``file://localhost/...``)."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ConfigError(f"not a local file URL: {url}")
        return cls(Path(unquote(parts.path)), max_manifest_bytes=max_manifest_bytes)

    def fetch(self, validators: Validators | None) -> FetchResult:
        try:
            with open_regular(self.path) as file:
                stat = os.fstat(file.fileno())
                current = Validators(etag=f'"{stat.st_mtime_ns}-{stat.st_size}"')
                if validators is not None and validators.etag == current.etag:
                    logger.debug("manifest %s not modified", self.path)
                    return FetchResult(not_modified=True, body=None, validators=current)
                body = file.read(self._max_bytes + 1)
        except OSError as exc:
            raise TransportError(
                f"cannot read manifest {self.path}: {exc.strerror or exc}"
            ) from exc
        if len(body) > self._max_bytes:
            raise ManifestError(f"manifest larger than {self._max_bytes} bytes")
        return FetchResult(not_modified=False, body=body, validators=current)

    def fetch_signature(self, max_bytes: int) -> bytes:
        """``version.json.minisig`` beside the manifest file; absent is a SignatureError."""
        path = self.path.with_name(self.path.name + ".minisig")
        try:
            with open_regular(path) as file:
                data = file.read(max_bytes + 1)
        except FileNotFoundError:
            raise SignatureError(f"missing signature: {path} does not exist") from None
        except OSError as exc:
            raise TransportError(
                f"cannot read signature {path}: {exc.strerror or exc}"
            ) from exc
        if len(data) > max_bytes:
            raise SignatureError(f"signature file {path} larger than {max_bytes} bytes")
        return data

