"""A release as an OCI artifact: pushed to a registry, or written as an image layout.

    release_tool.py VERSION --oci-push oci://HOST[:PORT]/REPO:TAG [--registry-credentials
                    FILE] [--ca-file FILE] [--oci-layout DIR] [--binary FILE] [--sign-key FILE]

The artifact's layout is ``launcher/sources/artifact.py``'s (the launcher reads what this
writes, from the same definitions): an image index under the tag, one image manifest per
platform whose layer is the build, and one whose layers are the signed ``version.json`` and
``version.json.minisig``. In that ``version.json`` each binary's ``url`` is
``oci:sha256:<hex>``, so the same signed bytes install from the registry, a mirror or a copy;
so is each patch's (``--delta-from``), a layer of the platform's manifest after the build.

The order keeps pullers safe, as for a release directory: blobs first, then the manifests
by digest, and the tag last (``PUT /v2/REPO/manifests/TAG``); in a layout, the blobs, then
``index.json`` replaced atomically. Uploads are monolithic (``POST`` then ``PUT ?digest=``);
a blob the registry already has (``HEAD``) is not sent again.

Pushing needs httpx and the launcher package (run with ``.venv/bin/python``); it goes
through the launcher's own client: https only, ``--ca-file``, the bearer-token or Basic
dance with ``--registry-credentials`` (Docker's ``config.json``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the launcher package
from release_files import ReleaseError, fsync_dir, read_chunks, write_atomically

from launcher.sources import artifact  # standard library only

PLATFORM_FILE = "agent-{platform}"


@dataclass
class Artifact:
    """Every blob and document of one release, and the index the tag will name."""

    version: str
    blobs: dict[str, Callable[[], bytes]] = field(default_factory=dict)  # digest -> content
    manifests: list[tuple[artifact.Descriptor, bytes]] = field(default_factory=list)
    index: bytes = b""

    @property
    def index_digest(self) -> str:
        return artifact.digest_of(self.index)


def oci_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with each binary's URL naming its blob in the artifact."""
    for entry in manifest["binaries"].values():
        entry["url"] = f"{artifact.BLOB_URL_PREFIX}sha256:{entry['sha256']}"
    return manifest


def patch_entry(base_sha256: str, patch: bytes) -> dict[str, object]:
    """The signed manifest's entry for a patch carried in the artifact (``deltas``)."""
    from release_deltas import patch_entry as entry

    return entry(f"{artifact.BLOB_URL_PREFIX}{artifact.digest_of(patch)}", base_sha256, patch)


def build(version: str, builds: dict[str, tuple[Path, str, int]], body: bytes,
          signature: bytes | None,
          patches: dict[str, list[tuple[bytes, str]]] | None = None) -> Artifact:
    """The artifact of ``builds`` (platform to file, sha256, size) and the signed manifest;
    ``patches`` (platform to patch bytes and file name) are layers after the build."""
    out = Artifact(version)
    out.blobs[artifact.digest_of(artifact.EMPTY_BLOB)] = lambda: artifact.EMPTY_BLOB
    platforms: dict[str, artifact.Descriptor] = {}
    for platform, (path, sha256, size) in sorted(builds.items()):
        layer = artifact.Descriptor(artifact.BINARY_TYPE, f"sha256:{sha256}", size)
        out.blobs[layer.digest] = lambda path=path: b"".join(read_chunks(path))  # type: ignore[misc]
        extra = [(_small(out, data, artifact.PATCH_TYPE), name)
                 for data, name in (patches or {}).get(platform, [])]
        platforms[platform] = _manifest(out, artifact.AGENT_TYPE, [
            (layer, PLATFORM_FILE.format(platform=platform)), *extra])
    layers = [(_small(out, body, artifact.MANIFEST_TYPE), "version.json")]
    if signature is not None:
        layers.append((_small(out, signature, artifact.SIGNATURE_TYPE), "version.json.minisig"))
    signed = _manifest(out, artifact.RELEASE_TYPE, layers)
    out.index = artifact.image_index(version, signed, platforms)
    return out


def _small(out: Artifact, data: bytes, media_type: str) -> artifact.Descriptor:
    descriptor = artifact.blob(data, media_type)
    out.blobs[descriptor.digest] = lambda: data
    return descriptor


def _manifest(out: Artifact, artifact_type: str,
              layers: list[tuple[artifact.Descriptor, str]]) -> artifact.Descriptor:
    body = artifact.image_manifest(artifact_type, layers)
    descriptor = artifact.blob(body, artifact.MANIFEST_DOC_TYPE)
    out.manifests.append((descriptor, body))
    return descriptor


# ---- an image layout ----------------------------------------------------------------------


def write_layout(root: Path, release: Artifact, ref_name: str) -> None:
    """Blobs (content-addressed, kept), then ``index.json`` naming this release, atomically."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    documents = {d.digest: body for d, body in release.manifests}
    documents[release.index_digest] = release.index
    for digest, content in [*release.blobs.items(),
                            *((d, (lambda b=b: b)) for d, b in documents.items())]:
        target = blobs / digest.removeprefix("sha256:")
        if target.is_file() and _file_digest(target) == digest:
            continue  # an earlier release's blob, intact
        got, _ = write_atomically(target, [content()], 0o644)
        if f"sha256:{got}" != digest:
            target.unlink()
            raise ReleaseError(f"{target}: the file changed while it was published")
    write_atomically(root / "oci-layout", [b'{"imageLayoutVersion": "1.0.0"}\n'], 0o644)
    entry = {"mediaType": artifact.INDEX_TYPE, "digest": release.index_digest,
             "size": len(release.index),
             "annotations": {artifact.REF_NAME: ref_name, artifact.VERSION: release.version}}
    write_atomically(root / "index.json", [artifact.encode(
        {"schemaVersion": 2, "mediaType": artifact.INDEX_TYPE, "manifests": [entry]})], 0o644)
    fsync_dir(root)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in read_chunks(path):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def layout_serial(root: Path, ref_name: str) -> int | None:
    """The serial of the release ``index.json`` names now, if there is one."""
    try:
        from launcher.sources.layout import LayoutSource

        body = LayoutSource(root, channel=ref_name).fetch(None).body
        serial = json.loads(body or b"{}").get("serial")
    except Exception:  # nothing readable there yet: a first release
        return None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


# ---- a registry ---------------------------------------------------------------------------


def push(url: str, release: Artifact, *, credentials: Path | None, ca_file: Path | None,
         log: Callable[[str], None] = print) -> None:
    """Blobs, manifests by digest, then the tag: the release is visible only once whole."""
    import httpx

    from launcher.errors import LauncherError
    from launcher.sources.http import make_client, status_error
    from launcher.sources.reference import parse_reference
    from launcher.sources.registry import Registry, load_credentials

    try:
        ref = parse_reference(url, "--oci-push")
        with make_client(ca_file=str(ca_file) if ca_file else None) as client:
            registry = Registry(ref.host, client=client, credentials=load_credentials(
                credentials) if credentials else {}, deadline_s=600.0, min_speed_bps=1.0)
            scope = f"repository:{ref.repository}:pull,push"

            def send(method: str, path: str, ok: tuple[int, ...], what: str,
                     **kw: Any) -> httpx.Response:
                answer, _ = registry.request(method, path, scope, limit=1 << 16, **kw)
                if answer.status_code not in ok:
                    raise status_error(f"{what}:", answer, _now)
                return answer

            for digest, content in release.blobs.items():
                blob_path = f"{ref.repository}/blobs/{digest}"
                if send("HEAD", blob_path, (200, 404), "blob check").status_code == 200:
                    continue
                started = send("POST", f"{ref.repository}/blobs/uploads/", (202,), "upload")
                location = started.headers.get("location", "")
                joiner = "&" if "?" in location else "?"
                send("PUT", f"{location}{joiner}digest={digest}", (201,), f"upload of {digest}",
                     content=content(), headers={"Content-Type": "application/octet-stream"})
                log(f"pushed blob {digest}")
            for descriptor, body in release.manifests:
                send("PUT", f"{ref.repository}/manifests/{descriptor.digest}", (201,),
                     f"manifest {descriptor.digest}", content=body,
                     headers={"Content-Type": artifact.MANIFEST_DOC_TYPE})
            send("PUT", f"{ref.repository}/manifests/{ref.tag}", (201,), f"tag {ref.tag}",
                 content=release.index, headers={"Content-Type": artifact.INDEX_TYPE})
    except LauncherError as exc:
        raise PushError(f"--oci-push {url}: {exc}") from exc
    log(f"pushed {url} = {release.index_digest} (version {release.version})")


def pushed_serial(url: str, *, credentials: Path | None, ca_file: Path | None) -> int | None:
    """The serial of the release the tag names now, when the registry has one."""
    from launcher.errors import LauncherError
    from launcher.sources.http import make_client
    from launcher.sources.oci import OciSource
    from launcher.sources.reference import parse_reference
    from launcher.sources.registry import load_credentials

    try:
        with make_client(ca_file=str(ca_file) if ca_file else None) as client:
            source = OciSource(parse_reference(url, "--oci-push"), client=client,
                               credentials=load_credentials(credentials) if credentials else {})
            body = source.fetch(None).body
        serial = json.loads(body or b"{}").get("serial")
    except (LauncherError, ValueError):
        return None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


class PushError(Exception):
    """The registry did not take the release (or could not be reached)."""


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
