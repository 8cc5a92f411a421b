"""A release as an OCI artifact: the documents the release tool writes and the launcher reads.

The tag names an image index; each entry is an image manifest whose one layer is a blob:

    index (application/vnd.oci.image.index.v1+json, the tag points here)
      manifests[]:
        platform {os: linux, architecture: amd64}   artifactType AGENT_TYPE
          -> manifest: config EMPTY, layers [agent-linux-amd64 (BINARY_TYPE),
                                             agent-linux-amd64.from-BASE.zst (PATCH_TYPE)...]
        platform {os: linux, architecture: arm64}   artifactType AGENT_TYPE
          -> manifest: config EMPTY, layers [agent-linux-arm64 (BINARY_TYPE)]
        (no platform)                               artifactType RELEASE_TYPE
          -> manifest: config EMPTY, layers [version.json (MANIFEST_TYPE),
                                             version.json.minisig (SIGNATURE_TYPE)]

Every layer carries ``org.opencontainers.image.title`` (its file name). A copying tool may
rewrite the index (skopeo 1.9 drops the entries' ``artifactType``): the signed manifest's
entry is then the one without a platform; the manifests themselves are never rewritten, as
their digests name them. In the signed
``version.json`` of such a release each binary's ``url`` is ``oci:sha256:<hex>``: the blob of
that digest in the same artifact, wherever it is served from (registry, mirror, layout),
and so is each of its ``deltas``' ``url``: the patches are layers of the platform's
manifest after the build (so a copying tool or a pull-through cache carries them too).

Nothing here is trusted: the signed ``version.json`` is. The launcher checks every document
it reads against the digest it was asked for (:func:`check_digest`), and the platform's
layer against the signed sha256 and size (:func:`check_binary_layer`), a patch's layer
likewise (:func:`check_patch_layer`). Standard library
only: the release tool builds with it too.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from launcher.errors import ChecksumError, ManifestError

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_DOC_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
RELEASE_TYPE = "application/vnd.nginx-manager.release.v1"
AGENT_TYPE = "application/vnd.nginx-manager.agent.v1"
BINARY_TYPE = "application/vnd.nginx-manager.agent.binary.v1"
PATCH_TYPE = "application/vnd.nginx-manager.agent.patch.v1"  # format: the signed delta's
MANIFEST_TYPE = "application/vnd.nginx-manager.manifest.v1+json"
SIGNATURE_TYPE = "application/vnd.nginx-manager.manifest.signature.v1"
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
REF_NAME = "org.opencontainers.image.ref.name"
BLOB_URL_PREFIX = "oci:"
MAX_DOCUMENT_BYTES = 256 * 1024  # an index or manifest; ours are a few hundred bytes
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str  # sha256:<hex>
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class Release:
    """What the launcher needs of an index: where the signed manifest and each build are."""

    manifest: Descriptor
    platforms: dict[str, Descriptor]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, expected: str, what: str) -> bytes:
    """``data`` if its sha256 is ``expected``; else ChecksumError naming ``what``."""
    got = digest_of(data)
    if got != expected:
        raise ChecksumError(f"sha256 mismatch for {what}: expected {expected}, got {got}")
    return data


def platform_name(entry: dict[str, Any]) -> str | None:
    """``linux-amd64`` for ``{"os": "linux", "architecture": "amd64"}``."""
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    return f"{os_name}-{arch}"


# ---- reading ------------------------------------------------------------------------------


def parse_index(body: bytes, where: str) -> Release:
    """The signed manifest's entry and each platform's. Tools that copy an index may drop
    the entries' ``artifactType`` (skopeo 1.9 does): then the signed manifest's entry is
    the one without a platform, whose layers say what it is."""
    document = load_document(body, where)
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"{where} is not an OCI image index (no 'manifests' list)")
    signed: list[Descriptor] = []
    unplaced: list[Descriptor] = []
    platforms: dict[str, Descriptor] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: an index entry is not an object")
        kind, name = entry.get("artifactType"), platform_name(entry)
        if kind == RELEASE_TYPE:
            signed.append(descriptor(entry, where))
        elif kind in (AGENT_TYPE, None) and name is not None:
            platforms.setdefault(name, descriptor(entry, where))
        elif kind is None and name is None:
            unplaced.append(descriptor(entry, where))
    chosen = signed or unplaced
    if len(chosen) != 1:
        raise ManifestError(f"{where} has {len(chosen)} entries that may be the signed "
                            f"version.json (artifactType {RELEASE_TYPE}, or no platform): not "
                            "a release pushed by release_tool.py")
    return Release(manifest=chosen[0], platforms=platforms)


def layer_list(body: bytes, where: str) -> list[Descriptor]:
    """An image manifest's layers, in order."""
    document = load_document(body, where)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise ManifestError(f"{where} is not an OCI image manifest (no 'layers' list)")
    if not all(isinstance(layer, dict) for layer in layers):
        raise ManifestError(f"{where}: a layer is not an object")
    return [descriptor(layer, where) for layer in layers]


def parse_layers(body: bytes, where: str) -> dict[str, Descriptor]:
    """An image manifest's layers by media type (the first of each)."""
    found: dict[str, Descriptor] = {}
    for one in layer_list(body, where):
        found.setdefault(one.media_type, one)
    return found


def signed_manifest_layers(body: bytes, where: str) -> tuple[Descriptor, Descriptor | None]:
    """The ``version.json`` layer and its signature layer (None: an unsigned release)."""
    layers = parse_layers(body, where)
    if MANIFEST_TYPE not in layers:
        raise ManifestError(f"{where} has no layer of type {MANIFEST_TYPE} (version.json)")
    return layers[MANIFEST_TYPE], layers.get(SIGNATURE_TYPE)


@dataclass(frozen=True)
class PlatformLayers:
    """A platform's image manifest: its build, and its patches by digest."""

    binary: Descriptor
    patches: dict[str, Descriptor]


def platform_layers(body: bytes, where: str) -> PlatformLayers:
    layers = layer_list(body, where)
    binary = next((d for d in layers if d.media_type == BINARY_TYPE), None)
    if binary is None:
        raise ManifestError(f"{where} has no layer of type {BINARY_TYPE} (the agent build)")
    return PlatformLayers(binary, {d.digest: d for d in layers if d.media_type == PATCH_TYPE})


def check_binary_layer(layer: Descriptor, sha256: str, size: int | None, url: str,
                       platform: str) -> None:
    """The registry's layer must be the build the signed manifest names: sha256 and size."""
    if url != BLOB_URL_PREFIX + "sha256:" + sha256:
        raise ManifestError(f"binary URL {url!r} for {platform} is not oci:sha256:{sha256}, "
                            "the blob the signed manifest names")
    if layer.digest != "sha256:" + sha256:
        raise ChecksumError(f"sha256 mismatch for the {platform} layer of the OCI release: "
                            f"the registry names {layer.digest}, the signed manifest "
                            f"sha256:{sha256}")
    if size is not None and layer.size != size:
        raise ChecksumError(f"size mismatch for the {platform} layer of the OCI release: the "
                            f"registry names {layer.size} bytes, the signed manifest {size}")


def check_patch_layer(layers: PlatformLayers, sha256: str, size: int, url: str,
                      platform: str) -> Descriptor:
    """The platform's layer holding the signed patch (its sha256 and size)."""
    if url != BLOB_URL_PREFIX + "sha256:" + sha256:
        raise ManifestError(f"patch URL {url!r} for {platform} is not oci:sha256:{sha256}, "
                            "the blob the signed manifest names")
    layer = layers.patches.get("sha256:" + sha256)
    if layer is None:
        raise ManifestError(f"the {platform} manifest of the OCI release has no patch layer "
                            f"sha256:{sha256}")
    if layer.size != size:
        raise ChecksumError(f"size mismatch for the {platform} patch layer sha256:{sha256}: "
                            f"the registry names {layer.size} bytes, the signed manifest "
                            f"{size}")
    return layer


def load_document(body: bytes, where: str) -> dict[str, Any]:
    """``body`` as a JSON object; ManifestError for anything else, nesting too deep for the
    parser included (each field's type is checked where it is read)."""
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise ManifestError(f"{where} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ManifestError(f"{where} is not a JSON object")
    return parsed


def descriptor(entry: dict[str, Any], where: str) -> Descriptor:
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) \
            or not _DIGEST.fullmatch(digest) or not isinstance(size, int) \
            or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: a descriptor without a valid mediaType, sha256 digest "
                            "and size")
    return Descriptor(media_type, digest, size)


# ---- writing (the release tool) -----------------------------------------------------------


def blob(data: bytes, media_type: str) -> Descriptor:
    return Descriptor(media_type, digest_of(data), len(data))


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def image_manifest(artifact_type: str, layers: list[tuple[Descriptor, str]]) -> bytes:
    """An image manifest of ``layers`` (descriptor, title) with the empty config."""
    return encode({
        "schemaVersion": 2,
        "mediaType": MANIFEST_DOC_TYPE,
        "artifactType": artifact_type,
        "config": blob(EMPTY_BLOB, EMPTY_TYPE).as_json(),
        "layers": [{**d.as_json(), "annotations": {TITLE: title}} for d, title in layers],
    })


def image_index(version: str, signed: Descriptor, platforms: dict[str, Descriptor]) -> bytes:
    entries = [{**signed.as_json(), "artifactType": RELEASE_TYPE}]
    for name, descriptor in sorted(platforms.items()):
        os_name, _, arch = name.partition("-")
        entries.append({**descriptor.as_json(), "artifactType": AGENT_TYPE,
                        "platform": {"os": os_name, "architecture": arch}})
    return encode({"schemaVersion": 2, "mediaType": INDEX_TYPE, "artifactType": RELEASE_TYPE,
                   "manifests": entries, "annotations": {VERSION: version}})
