"""The offline bundle: an OCI image layout, installed from ``file:///DIR`` and copied by
``skopeo`` (a standard OCI tool) into a real registry the launcher then installs from."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import release_tool
from conftest import ROOT, Launcher, https_args, run_cli, script_agent, unavailable
from hostile import sleeper
from oci_registry import RegistryProcess
from signing import Key, make_key

from launcher.sources.layout import LayoutSource
from launcher.worker import run_check


@pytest.fixture(scope="module")
def registry(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("registry"), ca) as server:
        yield server


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def release_tool_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "packaging" / "release_tool.py"), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def write_layout(directory: Path, version: str, binary: Path, key: Key,
                 *more: str) -> None:
    done = release_tool_cli(version, "--binary", str(binary), "--sign-key", str(key.secret),
                            "--oci-layout", str(directory), *more)
    assert done.returncode == 0, done.stderr
    assert f"wrote OCI layout {directory} = sha256:" in done.stdout


def test_offline_bundle_installs_and_updates_from_file_dir(
        tmp_path: Path, key: Key, ca_file: Path, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """release_tool.py --oci-layout DIR; a real launcher on file:///DIR installs 0.1.1, and
    0.1.2 written into the same DIR (index.json replaced last) is picked up at once."""
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.1", build("0.1.1"), key)
    assert json.loads((bundle / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    lch = launcher()
    # An hour between polls: only the watched index.json can bring 0.1.2 in time.
    lch.start(*https_args(lch, "--manifest-url", f"file://{bundle}", public_keys=(key.public,),
                          **{"--poll-interval": "3600"}),
              "--seed-binary", str(build("0.1.0")))
    lch.wait_healthy("0.1.1", timeout=30)
    write_layout(bundle, "0.1.2", build("0.1.2"), key)
    lch.wait_healthy("0.1.2", timeout=30)
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and s["current"]["version"] == "0.1.2", what="0.1.2 committed")
    assert st["last_error"] is None
    assert lch.stop() == 0


def skopeo_copy(bundle: Path, target: str, ca_file: Path, tmp_path: Path) -> tuple[str, Path]:
    """``skopeo copy --all oci:BUNDLE:stable docker://TARGET``; skopeo's path and the
    directory of certificates it trusts."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        unavailable("skopeo is not installed (apt-get install -y skopeo)")
    assert skopeo is not None
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(ca_file, certs / "ca.crt")
    copied = subprocess.run(
        [skopeo, "copy", "--all", "--dest-cert-dir", str(certs), f"oci:{bundle}:stable",
         f"docker://{target}"], capture_output=True, text=True, timeout=120, check=False)
    assert copied.returncode == 0, copied.stderr
    return skopeo, certs


def test_skopeo_copies_the_bundle_into_a_registry_that_then_serves_it(
        tmp_path: Path, key: Key, ca_file: Path, registry: RegistryProcess,
        build: Callable[[str], Path]) -> None:
    """``skopeo copy --all oci:DIR:stable docker://...`` takes the bundle as it is (digests
    kept), and a launcher checking the copy finds the signed release."""
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.1", build("0.1.1"), key)
    skopeo, certs = skopeo_copy(bundle, f"{registry.host}/copied/agent:stable", ca_file,
                                tmp_path)
    raw = subprocess.run([skopeo, "inspect", "--raw", "--cert-dir", str(certs),
                          f"docker://{registry.host}/copied/agent:stable"],
                         capture_output=True, check=True, timeout=60).stdout
    index = json.loads((bundle / "index.json").read_text())["manifests"][0]
    ours = json.loads((bundle / "blobs" / "sha256" / index["digest"][7:]).read_bytes())
    # skopeo rewrites the index (dropping the entries' artifactType); the manifests it names,
    # and so every blob, stay the very bytes the release tool wrote.
    assert sorted(e["digest"] for e in json.loads(raw)["manifests"]) == sorted(
        e["digest"] for e in ours["manifests"])
    out = run_cli("check", "--json", "--manifest-url",
                  f"oci://{registry.host}/copied/agent:stable", "--ca-file", str(ca_file),
                  "--public-key", str(key.public), "--state-dir", str(tmp_path / "state"),
                  "--platform", "linux-arm64")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "install" and result["version"] == "0.1.1"


def test_a_tampered_blob_in_the_bundle_is_refused(tmp_path: Path, key: Key,
                                                  build: Callable[[str], Path]) -> None:
    """Other bytes under the build's digest in blobs/sha256: refused (``sha256``)."""
    bundle = tmp_path / "bundle"
    manifest = release_tool.publish_oci("0.1.1", layout_dir=bundle, binary=build("0.1.1"),
                                        sign_key=key.secret, log=lambda _: None)
    blob = bundle / "blobs" / "sha256" / manifest["binaries"]["linux-amd64"]["sha256"]
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = run_check({"host_id": "h", "stage": True, "settings": {
        "manifest_url": f"file://{bundle}", "public_keys": [str(key.public)],
        "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
        "max_binary_bytes": 1 << 30, "download_deadline_s": 60.0, "min_speed_bps": 1.0}})
    assert result.outcome == "error" and result.error_kind == "sha256", result
    assert list((tmp_path / "state" / "bin").iterdir()) == []


def test_an_unsigned_bundle_is_refused_when_a_key_is_configured(
        tmp_path: Path, key: Key, build: Callable[[str], Path]) -> None:
    """A release without its version.json.minisig layer: ``signature``, nothing staged."""
    bundle = tmp_path / "bundle"
    release_tool.publish_oci("0.1.1", layout_dir=bundle, binary=build("0.1.1"),
                             log=lambda _: None)
    result = run_check({"host_id": "h", "stage": True, "settings": {
        "manifest_url": f"file://{bundle}", "public_keys": [str(key.public)],
        "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
        "max_binary_bytes": 1 << 30, "download_deadline_s": 60.0, "min_speed_bps": 1.0}})
    assert result.outcome == "error" and result.error_kind == "signature", result
    assert "missing signature" in (result.error or "")
    assert not (tmp_path / "state" / "bin").exists() or not any(
        (tmp_path / "state" / "bin").iterdir())


def test_a_bundle_for_another_channel_installs_on_that_channel(
        tmp_path: Path, key: Key, build: Callable[[str], Path]) -> None:
    """``--channel beta --oci-layout DIR``: the signed manifest says beta and the index
    entry is named beta, so a launcher on ``--channel beta`` stages it."""
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.1", build("0.1.1"), key, "--channel", "beta")
    index = json.loads((bundle / "index.json").read_text())
    assert [e["annotations"]["org.opencontainers.image.ref.name"]
            for e in index["manifests"]] == ["beta"]
    result = run_check({"host_id": "h", "stage": True, "settings": {
        "manifest_url": f"file://{bundle}", "public_keys": [str(key.public)],
        "channel": "beta", "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
        "max_binary_bytes": 1 << 30, "download_deadline_s": 60.0, "min_speed_bps": 1.0}})
    assert result.outcome == "staged", result
    body = LayoutSource(bundle, channel="beta").fetch(None).body
    assert body is not None and json.loads(body)["channel"] == "beta"


def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two 1 MiB script builds alike but for their version: a patch of a few hundred bytes."""
    return sleeper(tmp_path, "0.1.1", pad=1 << 20), sleeper(tmp_path, "0.1.2", pad=1 << 20)


def bundle_settings(bundle: Path, key: Key, state: Path) -> dict[str, Any]:
    return {"manifest_url": f"file://{bundle}", "public_keys": [str(key.public)],
            "platform": "linux-amd64", "state_dir": str(state), "max_binary_bytes": 1 << 30,
            "download_deadline_s": 60.0, "min_speed_bps": 1.0}


def test_a_bundle_carries_patches_and_installs_the_full_build(
        tmp_path: Path, key: Key, caplog: pytest.LogCaptureFixture) -> None:
    """``--oci-layout --delta-from FILE``: each platform's manifest has the patch as a layer
    after the build, and the signed manifest names it by digest; a launcher on the base
    installing from the bundle copies the full build (a local copy costs less than a
    rebuild)."""
    old, new = pair(tmp_path)
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.2", new, key, "--delta-from", str(old))
    body = LayoutSource(bundle).fetch(None).body
    assert body is not None
    (listed,) = json.loads(body)["binaries"]["linux-amd64"]["deltas"]
    assert listed["url"] == f"oci:sha256:{listed['sha256']}"
    assert listed["from_sha256"] == hashlib.sha256(old.read_bytes()).hexdigest()
    patch_blob = bundle / "blobs" / "sha256" / listed["sha256"]
    assert patch_blob.stat().st_size == listed["size"] < new.stat().st_size // 10
    documents = [json.loads(p.read_bytes()) for p in (bundle / "blobs" / "sha256").iterdir()
                 if p.stat().st_size < 4096 and p.read_bytes().startswith(b"{")]
    titles = sorted([x["annotations"]["org.opencontainers.image.title"] for x in d["layers"]]
                    for d in documents if any(x["digest"] == "sha256:" + listed["sha256"]
                                              for x in d.get("layers", [])))
    label = listed["from_sha256"][:12]
    assert titles == [[f"agent-{p}", f"agent-{p}.from-{label}.zst"]
                      for p in ("linux-amd64", "linux-arm64")]
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "agent").write_bytes(old.read_bytes())
    caplog.set_level(logging.INFO, logger="launcher")
    result = run_check({"host_id": "h", "stage": True,
                        "settings": bundle_settings(bundle, key, state)})
    assert result.outcome == "staged", result
    assert (state / "bin" / str(result.file)).read_bytes() == new.read_bytes()
    assert "rebuilt" not in caplog.text


def test_skopeo_carries_the_patches_and_a_launcher_on_the_copy_rebuilds_from_one(
        tmp_path: Path, key: Key, ca_file: Path, registry: RegistryProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    """The patch layers travel with the bundle: copied by skopeo into a registry, the
    release there gives a launcher on the base its patch, as the release tool's push does."""
    old, new = pair(tmp_path)
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.2", new, key, "--delta-from", str(old))
    skopeo_copy(bundle, f"{registry.host}/copied/patched:stable", ca_file, tmp_path)
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "bin" / "agent").write_bytes(old.read_bytes())
    caplog.set_level(logging.INFO, logger="launcher")
    result = run_check({"host_id": "h", "stage": True, "settings": {
        **bundle_settings(bundle, key, state), "ca_file": str(ca_file),
        "manifest_url": f"oci://{registry.host}/copied/patched:stable"}})
    assert result.outcome == "staged", result
    assert (state / "bin" / str(result.file)).read_bytes() == new.read_bytes()
    assert re.search(r"rebuilt 0\.1\.2 from a \d+ byte patch", caplog.text), caplog.text


def test_delta_from_a_version_not_in_the_release_directory_is_refused(
        tmp_path: Path, key: Key, build: Callable[[str], Path]) -> None:
    """``--delta-from VERSION`` with an OCI release reads ``--release-dir``; a version not
    published there is a clear error (exit 2) naming what is missing, and nothing is
    written."""
    bundle = tmp_path / "bundle"
    done = release_tool_cli("0.1.2", "--binary", str(build("0.1.2")), "--sign-key",
                            str(key.secret), "--oci-layout", str(bundle), "--release-dir",
                            str(tmp_path / "releases"), "--delta-from", "0.1.1")
    assert done.returncode == 2, done
    assert "--delta-from 0.1.1: no such file or published version" in done.stderr
    assert "releases/bin/0.1.1/agent-linux-amd64" in done.stderr
    assert not bundle.exists()


DEEP = b"[" * 100_000 + b"]" * 100_000
ANY = {"mediaType": "a", "digest": "sha256:" + "a" * 64, "size": 1}


@pytest.mark.parametrize("index", [
    json.dumps({"manifests": [{**ANY, "annotations": "x"}, {"annotations": "y"}]}).encode(),
    json.dumps({"manifests": [{**ANY, "annotations": {
        "org.opencontainers.image.ref.name": ["stable"]}}, ANY]}).encode(),
    json.dumps({"manifests": "x"}).encode(),
    json.dumps({"manifests": [{**ANY, "size": "1"}]}).encode(),
    b"[]",
    DEEP,
], ids=["annotations-string", "ref-name-list", "manifests-string", "size-string", "array",
        "deep"])
def test_a_malformed_index_json_is_a_manifest_error(index: bytes, tmp_path: Path) -> None:
    """Wrong types anywhere in index.json, or nesting too deep for the JSON parser: the
    check fails with a manifest error, it does not crash."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (bundle / "index.json").write_bytes(index)
    result = check_bundle(bundle, tmp_path)
    assert result.outcome == "error" and result.error_kind == "manifest", result


def test_a_deeply_nested_release_index_blob_is_a_manifest_error(
        tmp_path: Path, key: Key, build: Callable[[str], Path]) -> None:
    """index.json names (by its true digest) a release index nested 100,000 deep."""
    bundle = tmp_path / "bundle"
    write_layout(bundle, "0.1.1", build("0.1.1"), key)
    digest = hashlib.sha256(DEEP).hexdigest()
    (bundle / "blobs" / "sha256" / digest).write_bytes(DEEP)
    index = json.loads((bundle / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(DEEP))
    (bundle / "index.json").write_text(json.dumps(index))
    result = check_bundle(bundle, tmp_path)
    assert result.outcome == "error" and result.error_kind == "manifest", result
    assert "nested too deeply" in (result.error or "")


def check_bundle(bundle: Path, tmp_path: Path) -> Any:
    return run_check({"host_id": "h", "stage": False, "settings": {
        "manifest_url": f"file://{bundle}", "allow_unsigned": True,
        "platform": "linux-amd64", "state_dir": str(tmp_path / "state"),
        "max_binary_bytes": 1 << 30, "download_deadline_s": 60.0, "min_speed_bps": 1.0}})


def test_a_fifo_in_the_bundle_is_refused_without_blocking(tmp_path: Path, key: Key) -> None:
    """A FIFO in place of a blob (or index.json) is a clear error at once, not a worker
    blocked in ``open`` until its deadline."""
    import os
    import time

    bundle = tmp_path / "bundle"
    manifest = release_tool.publish_oci("0.1.1", layout_dir=bundle,
                                        binary=sleeper(tmp_path, "0.1.1"),
                                        sign_key=key.secret, log=lambda _: None)
    blob = bundle / "blobs" / "sha256" / manifest["binaries"]["linux-amd64"]["sha256"]
    blob.unlink()
    os.mkfifo(blob)
    started = time.monotonic()
    result = run_check({"host_id": "h", "stage": True,
                        "settings": bundle_settings(bundle, key, tmp_path / "state")})
    assert result.outcome == "error" and "not a regular file" in (result.error or ""), result
    (bundle / "index.json").unlink()
    os.mkfifo(bundle / "index.json")
    again = run_check({"host_id": "h", "stage": True,
                       "settings": bundle_settings(bundle, key, tmp_path / "state")})
    assert again.outcome == "error" and "not a regular file" in (again.error or ""), again
    assert time.monotonic() - started < 5.0


def test_delta_from_a_version_of_the_release_dir_given(tmp_path: Path, key: Key) -> None:
    """``--delta-from VERSION`` with ``--release-dir DIR`` holding that version: the patch
    is made from ``DIR/bin/VERSION/agent-PLATFORM``, as for a release directory."""
    old, new = pair(tmp_path)
    release = tmp_path / "releases"
    for platform in ("linux-amd64", "linux-arm64"):
        (release / "bin" / "0.1.1").mkdir(parents=True, exist_ok=True)
        shutil.copy(old, release / "bin" / "0.1.1" / f"agent-{platform}")
    bundle = tmp_path / "bundle"
    done = release_tool_cli("0.1.2", "--binary", str(new), "--sign-key", str(key.secret),
                            "--oci-layout", str(bundle), "--release-dir", str(release),
                            "--delta-from", "0.1.1")
    assert done.returncode == 0, done.stderr
    body = LayoutSource(bundle).fetch(None).body
    assert body is not None
    (listed,) = json.loads(body)["binaries"]["linux-amd64"]["deltas"]
    assert listed["from_sha256"] == hashlib.sha256(old.read_bytes()).hexdigest()


def test_more_bases_than_a_launcher_takes_are_not_published(tmp_path: Path, key: Key) -> None:
    """``--delta-from`` is repeatable, but a launcher refuses a manifest listing more than
    ``MAX_DELTAS`` patches per platform: the release tool must refuse (or leave out the
    rest), never publish a release that no host can read."""
    from launcher.manifest import MAX_DELTAS

    assert release_tool.MAX_DELTAS == MAX_DELTAS
    new = script_agent(tmp_path / "agent-new", "0.1.2", "sleep 60\n" + "# pad\n" * 400)
    bases = [script_agent(tmp_path / f"agent-{n}", f"0.0.{n}", "sleep 60\n" + "# pad\n" * 400)
             for n in range(MAX_DELTAS + 1)]
    bundle = tmp_path / "bundle"
    try:
        release_tool.publish_oci("0.1.2", layout_dir=bundle, binary=new, sign_key=key.secret,
                                 delta_from=[str(b) for b in bases], log=lambda _: None)
    except release_tool.ReleaseError:
        assert not bundle.exists()
        return
    state = tmp_path / "state"
    result = run_check({"host_id": "h", "stage": False,
                        "settings": bundle_settings(bundle, key, state)})
    assert result.outcome != "error", result
