"""The OCI source's pure parts and its redirect rule (httpx.MockTransport, no registry)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher import download, settings
from launcher.errors import ChecksumError, ConfigError, InsecureError, ManifestError
from launcher.sources import artifact
from launcher.sources.http import make_client
from launcher.sources.reference import Reference, parse_mirror, parse_reference
from launcher.sources.registry import Registry, load_credentials, parse_challenge
from launcher.worker import run_check


def test_references() -> None:
    assert parse_reference("oci://reg.example:5000/team/agent:stable") == Reference(
        "reg.example:5000", "team/agent", "stable")
    for bad in ("oci://reg.example/agent", "oci://reg.example/Agent:1", "https://r/a:b",
                "oci://reg.example/agent:a/b", "oci://bad host/agent:1"):
        with pytest.raises(ConfigError, match="--manifest-url"):
            parse_reference(bad)
    assert parse_mirror("mirror.example:443/proxy-cache") == ("mirror.example:443",
                                                              "proxy-cache")
    with pytest.raises(ConfigError, match="--mirror"):
        parse_mirror("mirror.example/Not Valid")


def test_docker_config_credentials(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:pa:ss").decode()
    path.write_text(json.dumps({"auths": {"https://Reg.Example:5000/v1/": {"auth": auth},
                                          "other.example": {"username": "u",
                                                            "password": "p"}}}))
    assert load_credentials(path) == {"reg.example:5000": ("alice", "pa:ss"),
                                      "other.example": ("u", "p")}
    path.write_text('{"auths": {"x": {"auth": "not base64!"}}}')
    with pytest.raises(ConfigError, match="the entry for x has no"):
        load_credentials(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match='no "auths" object'):
        load_credentials(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_credentials(tmp_path / "missing.json")


def test_challenges() -> None:
    assert parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg",
                   "scope": "repository:a/b:pull"})
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic",
                                                              {"realm": "Registry Realm"})


def test_settings_take_oci_urls_and_mirrors(tmp_path: Path) -> None:
    loaded = settings.load({"manifest_url": "oci://reg.example/agent:stable"},
                           environ={"NGINX_MANAGER_MIRROR": "m1.example:5000, m2.example"})
    assert loaded.mirrors == ("m1.example:5000", "m2.example")
    with pytest.raises(ConfigError, match="need a --manifest-url oci://HOST/REPOSITORY:TAG"):
        settings.load({"manifest_url": "https://u.example/version.json",
                       "mirror": ["m.example"]}, environ={})
    with pytest.raises(ConfigError, match=r"--registry-credentials .* does not exist"):
        settings.load({"manifest_url": "oci://reg.example/agent:1",
                       "registry_credentials": str(tmp_path / "nope.json")}, environ={})


def test_index_entries_and_layers() -> None:
    one = artifact.blob(b"x", artifact.MANIFEST_DOC_TYPE)
    two_unplaced = artifact.encode({"manifests": [one.as_json(), one.as_json()]})
    with pytest.raises(ManifestError, match="2 entries that may be the signed"):
        artifact.parse_index(two_unplaced, "index")
    layer = artifact.blob(b"build", artifact.BINARY_TYPE)
    with pytest.raises(ChecksumError, match="size mismatch"):
        artifact.check_binary_layer(layer, layer.hex, 99, f"oci:{layer.digest}", "linux-amd64")
    with pytest.raises(ManifestError, match="is not oci:sha256:"):
        artifact.check_binary_layer(layer, layer.hex, 5, "https://x/agent", "linux-amd64")


def test_a_patch_layer_must_be_the_signed_patch() -> None:
    """The platform's manifest lists its patches after the build; the one the signed
    manifest names is used only under its own digest, size and oci: URL."""
    build, patch = artifact.blob(b"build", artifact.BINARY_TYPE), artifact.blob(
        b"patch", artifact.PATCH_TYPE)
    body = artifact.image_manifest(artifact.AGENT_TYPE, [(build, "agent"), (patch, "p.zst")])
    layers = artifact.platform_layers(body, "doc")
    assert layers.binary == build and layers.patches == {patch.digest: patch}
    url = f"oci:{patch.digest}"
    assert artifact.check_patch_layer(layers, patch.hex, 5, url, "linux-amd64") == patch
    with pytest.raises(ManifestError, match="is not oci:sha256:"):
        artifact.check_patch_layer(layers, patch.hex, 5, "https://x/p.zst", "linux-amd64")
    with pytest.raises(ChecksumError, match=r"size mismatch .* 5 bytes, the signed manifest 6"):
        artifact.check_patch_layer(layers, patch.hex, 6, url, "linux-amd64")
    other = "ab" * 32
    with pytest.raises(ManifestError, match=f"has no patch layer sha256:{other}"):
        artifact.check_patch_layer(layers, other, 5, f"oci:sha256:{other}", "linux-amd64")
    only_patches = artifact.image_manifest(artifact.AGENT_TYPE, [(patch, "p.zst")])
    with pytest.raises(ManifestError, match="has no layer of type"):
        artifact.platform_layers(only_patches, "doc")


def test_a_blob_redirected_to_storage_carries_no_credentials(tmp_path: Path) -> None:
    """The registry's token goes to the registry; its redirect to blob storage (another
    origin) is followed without it, and a redirect to plain http is refused."""
    data = b"the build"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: list[httpx.Request] = []
    storage = {"url": "https://storage.example/blob?sig=abc"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T0KEN"})
        if request.url.host == "storage.example":
            return httpx.Response(200, content=data)
        if request.headers.get("authorization") != "Bearer T0KEN":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="https://auth.example/token",service="reg"')})
        if request.url.path == f"/v2/agent/blobs/{digest}":
            return httpx.Response(307, headers={"Location": storage["url"]})
        return httpx.Response(200)

    with make_client(transport=httpx.MockTransport(handler)) as client:
        registry = Registry("reg.example", client=client,
                            credentials={"reg.example": ("alice", "secret")})
        headers = registry.prepare("repository:agent:pull")
        got = download.download(client, registry.url(f"agent/blobs/{digest}"), tmp_path,
                                expected_sha256=digest[7:], expected_size=len(data),
                                headers=headers)
        assert got.read_bytes() == data
        token_request = next(r for r in seen if r.url.host == "auth.example")
        assert token_request.headers["authorization"] == "Basic " + base64.b64encode(
            b"alice:secret").decode()
        assert token_request.url.params["scope"] == "repository:agent:pull"
        to_storage = [r for r in seen if r.url.host == "storage.example"]
        assert len(to_storage) == 1 and "authorization" not in to_storage[0].headers
        storage["url"] = "http://storage.example/blob"
        with pytest.raises(InsecureError, match="plain http"):
            download.download(client, registry.url(f"agent/blobs/{digest}"), tmp_path,
                              expected_sha256=digest[7:], expected_size=len(data),
                              headers=headers)


def test_an_oci_blob_url_needs_an_oci_source(tmp_path: Path) -> None:
    """A plain manifest naming ``oci:sha256:...`` is refused at staging, not fetched."""
    sha = "ab" * 32
    (tmp_path / "version.json").write_text(json.dumps({"version": "0.1.1", "binaries": {
        "linux-amd64": {"url": f"oci:sha256:{sha}", "sha256": sha, "size": 5}}}))
    result = run_check({"host_id": "h", "stage": True, "settings": {
        "manifest_url": f"file://{tmp_path}/version.json", "allow_unsigned": True,
        "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
        "max_binary_bytes": 1 << 20, "download_deadline_s": 5.0, "min_speed_bps": 1.0}})
    assert result.outcome == "error" and result.error_kind == "manifest"
    assert "names a blob of an OCI release" in (result.error or "")


def test_a_failed_mirror_is_not_asked_again_in_the_same_check(tmp_path: Path) -> None:
    """A mirror that cannot be reached costs one attempt per check, not one per document."""
    from launcher.sources.oci import OciSource

    version_json = b'{"version": "0.1.1", "binaries": {}}'
    vj = artifact.blob(version_json, artifact.MANIFEST_TYPE)
    signed_doc = artifact.image_manifest(artifact.RELEASE_TYPE, [(vj, "version.json")])
    signed = artifact.blob(signed_doc, artifact.MANIFEST_DOC_TYPE)
    index = artifact.image_index("0.1.1", signed, {})
    by_path = {"/v2/agent/manifests/stable": index,
               f"/v2/agent/manifests/{signed.digest}": signed_doc,
               f"/v2/agent/blobs/{vj.digest}": version_json}
    mirror_attempts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "mirror.example":
            mirror_attempts.append(request.url.path)
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, content=by_path[request.url.path])

    with make_client(transport=httpx.MockTransport(handler)) as client:
        source = OciSource(parse_reference("oci://reg.example/agent:stable"), client=client,
                           mirrors=("mirror.example",))
        fetched = source.fetch(None)
    assert fetched.body == version_json
    assert fetched.validators.etag == f'"{artifact.digest_of(index)}"'
    assert mirror_attempts == ["/v2/agent/manifests/stable"]


def test_an_endless_index_is_cut_at_its_cap() -> None:
    """A registry answering the tag with an endless body: refused past 256 KiB."""
    from launcher.sources.oci import OciSource

    sent = {"bytes": 0}

    def endless() -> Iterator[bytes]:
        while True:
            sent["bytes"] += 65536
            yield b" " * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    with make_client(transport=httpx.MockTransport(handler)) as client:
        source = OciSource(parse_reference("oci://reg.example/agent:stable"), client=client)
        with pytest.raises(ManifestError, match="larger than 262144 bytes"):
            source.fetch(None)
    assert sent["bytes"] <= 2 * artifact.MAX_DOCUMENT_BYTES


def test_credentials_readable_by_others_are_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {}}')
    path.chmod(0o644)
    assert load_credentials(path) == {}
    assert "readable by other users: chmod 600 it" in caplog.text


def _mutations(value: Any) -> Iterator[Any]:
    """``value`` with each node in turn replaced by each wrongly typed value."""
    wrong: list[Any] = ["x", 7, None, [], {}, True, 1.5, [[["deep"]]]]
    yield from wrong
    if isinstance(value, dict):
        for key, item in value.items():
            for changed in _mutations(item):
                yield {**value, key: changed}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for changed in _mutations(item):
                yield [*value[:i], changed, *value[i + 1:]]


def test_wrong_types_anywhere_in_oci_documents_are_manifest_errors() -> None:
    """Every field of an index and of an image manifest replaced, one at a time, by a value
    of another type: a release or a ManifestError, never another exception."""
    layer = artifact.blob(b"build", artifact.BINARY_TYPE)
    signed = artifact.blob(b"m", artifact.MANIFEST_DOC_TYPE)
    index = json.loads(artifact.image_index("0.1.1", signed, {"linux-amd64": layer}))
    patch = artifact.blob(b"patch", artifact.PATCH_TYPE)
    manifest = json.loads(artifact.image_manifest(artifact.AGENT_TYPE,
                                                  [(layer, "agent"), (patch, "agent.zst")]))
    readers = [artifact.parse_index, artifact.parse_layers, artifact.signed_manifest_layers,
               artifact.platform_layers]
    refused = 0
    for document in (index, manifest):
        for changed in _mutations(document):
            body = json.dumps(changed).encode()
            for read in readers:
                try:
                    read(body, "doc")
                except ManifestError:
                    refused += 1
    assert refused > 100
