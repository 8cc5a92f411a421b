"""Releases from an OCI registry (``--manifest-url oci://HOST[:PORT]/REPOSITORY:TAG``).

One check resolves the tag once, with a conditional GET (``If-None-Match`` with the digest
of the index accepted last): that answer's digest is the release, and everything after it
is pulled by digest, each document checked against the digest it was asked for, so a tag
moved in the middle of a check cannot mix two releases. The signed ``version.json`` and its
signature are two layers of the release's manifest (see ``artifact``); the build is the
blob the signed manifest names by sha256 (``oci:sha256:<hex>``), and the platform's layer in
the index must name the same digest and size before it is downloaded (through
``launcher.download``, with its deadline, speed floor and sha256 check).

``--mirror HOST[:PORT][/PREFIX]`` (repeatable) are asked first, in order, for every request
(the tag included); a mirror that fails (down, 404, refused, a wrong digest) is skipped for
the next host, the origin last (a patch it fails excepted: it is still asked for the full
build). The origin's failure is the check's error. A mirror whose
release fails verification (signature, key, serial, channel, a layer other than the signed
build: the worker's checks) is skipped the same way (:meth:`OciSource.skip_release_mirror`),
and the worker reads the release again from the next host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from launcher.errors import ManifestError, SignatureError, SourceError
from launcher.redact import redact
from launcher.sources import artifact
from launcher.sources.base import FetchResult, Validators
from launcher.sources.http import METADATA_DEADLINE_S, MIN_SPEED_BPS, status_error
from launcher.sources.reference import Reference, parse_mirror, parse_reference
from launcher.sources.registry import Credentials, Registry, load_credentials

if TYPE_CHECKING:
    from launcher.manifest import Binary, Delta

logger = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024
_ACCEPT_INDEX = {"Accept": artifact.INDEX_TYPE}
_ACCEPT_MANIFEST = {"Accept": artifact.MANIFEST_DOC_TYPE}
T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    registry: Registry
    repository: str
    mirror: bool

    @property
    def scope(self) -> str:
        return f"repository:{self.repository}:pull"

    def __str__(self) -> str:
        return f"{'mirror' if self.mirror else 'registry'} {self.registry.host}"


class ArtifactReader:
    """What an OCI registry and an OCI layout share: the release read from its index."""

    where: str
    release: artifact.Release | None = None
    _signature_layer: artifact.Descriptor | None = None
    _layers: tuple[str, artifact.PlatformLayers] | None = None  # one platform manifest read

    def _document(self, descriptor: artifact.Descriptor, what: str) -> bytes:
        raise NotImplementedError

    def _blob(self, descriptor: artifact.Descriptor, limit: int, what: str,
              too_large: SourceError) -> bytes:
        raise NotImplementedError

    def _signed_manifest(self, index: bytes, digest: str) -> bytes:
        """From the index (already checked against ``digest``): the ``version.json`` bytes."""
        self.release = artifact.parse_index(index, f"OCI index {digest} of {self.where}")
        what = f"release manifest {self.release.manifest.digest}"
        layers = self._document(self.release.manifest, what)
        version_json, self._signature_layer = artifact.signed_manifest_layers(layers, what)
        return self._blob(version_json, MAX_MANIFEST_BYTES, "version.json", ManifestError(
            f"version.json of {self.where} larger than {MAX_MANIFEST_BYTES} bytes"))

    def fetch_signature(self, max_bytes: int) -> bytes:
        if self.release is None:
            raise SignatureError("no OCI release fetched yet")
        if self._signature_layer is None:
            raise SignatureError(f"missing signature: the release at {self.where} has no "
                                 f"{artifact.SIGNATURE_TYPE} layer (version.json.minisig)")
        return self._blob(self._signature_layer, max_bytes, "version.json.minisig",
                          SignatureError(f"signature of {self.where} larger than {max_bytes} "
                                         "bytes"))

    def binary_layer(self, binary: Binary, platform: str) -> artifact.Descriptor:
        """The platform's layer, once it is known to be the build the signed manifest names."""
        layer = self._platform(platform).binary
        artifact.check_binary_layer(layer, binary.sha256, binary.size, binary.url, platform)
        return layer

    def patch_layer(self, binary: Binary, delta: Delta, platform: str) -> artifact.Descriptor:
        """The layer of the platform's manifest holding ``delta``, the signed patch of
        ``binary``; checked after the build's layer, so a release whose build is not the
        signed one fails the same way with or without a patch."""
        self.binary_layer(binary, platform)
        return artifact.check_patch_layer(self._platform(platform), delta.sha256, delta.size,
                                          delta.url, platform)

    def _platform(self, platform: str) -> artifact.PlatformLayers:
        if self.release is None:
            raise ManifestError("no OCI release fetched yet")
        entry = self.release.platforms.get(platform)
        if entry is None:
            have = ", ".join(sorted(self.release.platforms)) or "none"
            raise ManifestError(f"the OCI release at {self.where} has no {platform} entry "
                                f"(has: {have})")
        if self._layers is None or self._layers[0] != entry.digest:
            what = f"{platform} manifest {entry.digest}"
            self._layers = entry.digest, artifact.platform_layers(
                self._document(entry, what), what)
        return self._layers[1]


class OciSource(ArtifactReader):
    """A release in a registry, through its mirrors first."""

    def __init__(self, reference: Reference, *, client: httpx.Client,
                 mirrors: tuple[str, ...] = (), credentials: Credentials | None = None,
                 deadline_s: float = METADATA_DEADLINE_S,
                 min_speed_bps: float = MIN_SPEED_BPS) -> None:
        self.reference = reference
        self.where = str(reference)
        self._client = client

        def host(name: str, repository: str, mirror: bool) -> Host:
            return Host(Registry(name, client=client, credentials=credentials or {},
                                 deadline_s=deadline_s, min_speed_bps=min_speed_bps),
                        repository, mirror)

        self.hosts = [host(name, f"{prefix}/{reference.repository}".lstrip("/"), True)
                      for name, prefix in map(parse_mirror, mirrors)]
        self.hosts.append(host(reference.host, reference.repository, False))
        self._failed: set[str] = set()
        self._served_by: Host | None = None

    def skip_release_mirror(self, exc: SourceError) -> bool:
        """The release read last failed verification (``exc``: its signature, key, serial,
        channel, or a layer other than the signed build). True when a mirror resolved it:
        that mirror is not asked again in this check, and the caller reads the release
        again from the next host; False when the origin did (the check's error)."""
        host = self._served_by
        if host is None or not host.mirror:
            return False
        self._failed.add(host.registry.host)
        self._served_by = self.release = None
        logger.warning("%s serves a release of %s that fails verification (%s); trying the "
                       "next host", host, self.where, exc.describe())
        return True

    def fetch(self, validators: Validators | None) -> FetchResult:
        known = validators.etag if validators is not None else None
        self._served_by, digest, index = self._each_host(
            "the tag", lambda h: (h, *self._resolve(h, known)))
        current = Validators(etag=f'"{digest}"')
        if digest is None or current.etag == known:
            logger.debug("OCI tag %s not modified", self.where)
            return FetchResult(not_modified=True, body=None, validators=Validators(etag=known))
        logger.info("OCI tag %s is %s", self.where, digest)
        return FetchResult(not_modified=False, body=self._signed_manifest(index, digest),
                           validators=current)

    def _resolve(self, host: Host, known: str | None) -> tuple[str | None, bytes]:
        headers = dict(_ACCEPT_INDEX)
        if known:
            headers["If-None-Match"] = known
        path = f"{host.repository}/manifests/{self.reference.tag}"
        response, body = host.registry.request(
            "GET", path, host.scope, headers=headers, limit=artifact.MAX_DOCUMENT_BYTES,
            too_large=ManifestError(f"OCI index of {self.where} larger than "
                                    f"{artifact.MAX_DOCUMENT_BYTES} bytes"))
        if response.status_code == 304 and known:
            return None, b""
        if not response.is_success:
            raise status_error(f"{host}: request for tag {self.reference.tag} to", response,
                               _utcnow)
        return artifact.digest_of(body), body

    def _document(self, descriptor: artifact.Descriptor, what: str) -> bytes:
        return self._get(descriptor, "manifests", _ACCEPT_MANIFEST, artifact.MAX_DOCUMENT_BYTES,
                         what, ManifestError(f"{what} larger than "
                                             f"{artifact.MAX_DOCUMENT_BYTES} bytes"))

    def _blob(self, descriptor: artifact.Descriptor, limit: int, what: str,
              too_large: SourceError) -> bytes:
        return self._get(descriptor, "blobs", {}, limit, what, too_large)

    def _get(self, descriptor: artifact.Descriptor, kind: str, headers: dict[str, str],
             limit: int, what: str, too_large: SourceError) -> bytes:
        def one(host: Host) -> bytes:
            path = f"{host.repository}/{kind}/{descriptor.digest}"
            response, body = host.registry.request("GET", path, host.scope, headers=headers,
                                                   limit=limit, too_large=too_large)
            if not response.is_success:
                raise status_error(f"{host}: request for {what} to", response, _utcnow)
            return artifact.check_digest(body, descriptor.digest, f"{what} from {host}")

        return self._each_host(what, one)

    def stage_binary(self, binary: Binary, platform: str, dest_dir: Path,
                     s: Mapping[str, Any], *, version: str | None = None,
                     deadline_s: float | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The build, downloaded beside the target and checked against the signed manifest,
        its progress in ``state_dir/transfer.json`` (``status`` shows it) as for http."""
        return self._stage(self.binary_layer(binary, platform), binary.sha256, binary.size,
                           f"the {platform} build", dest_dir, s, deadline_s=deadline_s,
                           keep=keep, extra={"version": version, "kind": "full"})

    def stage_patch(self, binary: Binary, delta: Delta, platform: str, dest_dir: Path,
                    s: Mapping[str, Any], *, version: str | None = None,
                    deadline_s: float | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The signed patch ``delta`` of ``binary``, downloaded like the build. A mirror that
        fails the patch is still asked for the full build the caller falls back to: a patch
        blob missing or corrupt there says nothing of the build it serves."""
        layer = self.patch_layer(binary, delta, platform)
        failed = set(self._failed)
        try:
            return self._stage(layer, delta.sha256, delta.size, f"the {platform} patch",
                               dest_dir, s, deadline_s=deadline_s, keep=keep,
                               extra={"version": version, "kind": "delta"})
        except Exception:
            self._failed = failed
            raise

    def _stage(self, layer: artifact.Descriptor, sha256: str, size: int | None, what: str,
               dest_dir: Path, s: Mapping[str, Any], *, deadline_s: float | None,
               keep: tuple[str, ...], extra: dict[str, Any]) -> Path:
        from launcher import download
        from launcher.progress import TRANSFER_FILE, Progress

        deadline = float(s["download_deadline_s"]) if deadline_s is None else deadline_s
        start = time.monotonic()

        def one(host: Host) -> Path:
            url = host.registry.url(f"{host.repository}/blobs/{layer.digest}")
            return download.download(
                self._client, url, dest_dir, expected_sha256=sha256, expected_size=size,
                max_bytes=int(s["max_binary_bytes"]),
                deadline_s=max(deadline - (time.monotonic() - start), 0.001),
                min_speed_bps=float(s["min_speed_bps"]),
                headers=lambda: host.registry.prepare(host.scope), keep_partials=keep,
                resume_as=artifact.BLOB_URL_PREFIX + layer.digest,  # the same on every host
                progress=Progress(redact(url), size,
                                  file=Path(s["state_dir"]) / TRANSFER_FILE, extra=extra))

        return self._each_host(what, one)

    def _each_host(self, what: str, attempt: Callable[[Host], T]) -> T:
        """``attempt`` on each host in turn, mirrors first; the origin's failure is final.
        A mirror that failed once is not asked again in this check (a mirror that times
        out would otherwise cost a timeout per document)."""
        for host in self.hosts:
            if host.mirror and host.registry.host in self._failed:
                continue
            try:
                return attempt(host)
            except SourceError as exc:
                if not host.mirror:
                    raise
                self._failed.add(host.registry.host)
                logger.warning("%s failed for %s (%s); trying the next host", host, what,
                               exc.describe())
        raise AssertionError("unreachable: the origin is always the last host")


def from_settings(s: Mapping[str, Any], client: httpx.Client) -> OciSource:
    path = s.get("registry_credentials")
    return OciSource(
        parse_reference(str(s["manifest_url"])), client=client,
        mirrors=tuple(s.get("mirrors") or ()),
        credentials=load_credentials(path) if path else {},
        deadline_s=float(s.get("metadata_deadline_s") or METADATA_DEADLINE_S),
        min_speed_bps=float(s.get("min_speed_bps") or MIN_SPEED_BPS),
    )


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)

