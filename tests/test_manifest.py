"""The manifest model: the seed's wire format, optional fields, one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from packaging.version import Version
from pydantic import ValidationError

from launcher.errors import ExpiredError, ManifestError
from launcher.manifest import Binary, Manifest, check_not_expired, parse_manifest

SHA = "ab" * 32


def seed_manifest(**extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": "0.1.2",
        "release_date": "2026-02-10T21:00:00Z",
        "binaries": {
            "linux-amd64": {"url": "https://u/bin/0.1.2/agent-linux-amd64", "sha256": SHA},
            "linux-arm64": {"url": "https://u/bin/0.1.2/agent-linux-arm64", "sha256": SHA},
        },
    }
    document.update(extra)
    return document


def parse(document: Any) -> Manifest:
    return parse_manifest(json.dumps(document).encode())


def refusal(document: Any) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(document)
    return str(caught.value)


def test_seed_manifest_parses() -> None:
    manifest = parse(seed_manifest())
    assert manifest.version == "0.1.2"
    assert manifest.parsed_version == Version("0.1.2")
    assert manifest.release_date == "2026-02-10T21:00:00Z"
    assert manifest.binary_for("linux-arm64").url.endswith("agent-linux-arm64")
    assert manifest.binary_for("linux-amd64").size is None
    assert manifest.expires is None and manifest.rollout is None


def test_optional_fields_parse() -> None:
    document = seed_manifest(expires="2030-01-01T00:00:00Z", rollout={"percent": 12.5})
    document["binaries"]["linux-amd64"]["size"] = 1234
    manifest = parse(document)
    assert manifest.expires == datetime(2030, 1, 1, tzinfo=UTC)
    assert manifest.rollout is not None and manifest.rollout.percent == 12.5
    assert manifest.binary_for("linux-amd64").size == 1234


def test_original_version_string_is_kept() -> None:
    manifest = parse(seed_manifest(version="v1.0"))
    assert manifest.version == "v1.0"
    assert manifest.parsed_version == Version("1.0")


def test_unknown_fields_are_ignored() -> None:
    document = seed_manifest(dependencies=["x"], future={"a": 1})
    document["binaries"]["linux-amd64"]["mirrors"] = ["https://elsewhere"]
    manifest = parse(document)
    assert not hasattr(manifest, "dependencies")
    assert manifest.binary_for("linux-amd64").sha256 == SHA


def test_uppercase_sha256_is_normalised() -> None:
    document = seed_manifest()
    document["binaries"]["linux-amd64"]["sha256"] = SHA.upper()
    assert parse(document).binary_for("linux-amd64").sha256 == SHA


def test_models_are_frozen() -> None:
    manifest = parse(seed_manifest())
    with pytest.raises(ValidationError):
        manifest.version = "9.9.9"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "manifest is not valid JSON: Expecting value at line 1 column 1"),
        (b'{"version": ', "manifest is not valid JSON: Expecting value at line 1 column 13"),
        (b"<html>oops</html>", "manifest is not valid JSON: Expecting value at line 1 column 1"),
        (b"[1, 2]", "manifest is not a JSON object (got list)"),
        (b'{"version": NaN}', "manifest is not valid JSON: NaN is not allowed"),
    ],
)
def test_malformed_json(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    assert str(caught.value) == message
    assert caught.value.kind == "manifest"


def test_missing_fields_are_named() -> None:
    document = seed_manifest()
    del document["binaries"]
    assert refusal(document) == "manifest field 'binaries': Field required"
    document = seed_manifest()
    del document["binaries"]["linux-amd64"]["url"]
    assert refusal(document) == "manifest field 'binaries.linux-amd64.url': Field required"


def test_invalid_version() -> None:
    assert refusal(seed_manifest(version="abc")) == "manifest version 'abc' is not a valid version"
    assert "manifest field 'version'" in refusal(seed_manifest(version=12))


@pytest.mark.parametrize("sha", ["abc", "g" * 64, SHA + "0", ""])
def test_bad_sha256_format(sha: str) -> None:
    document = seed_manifest()
    document["binaries"]["linux-amd64"]["sha256"] = sha
    assert refusal(document) == (
        "manifest field 'binaries.linux-amd64.sha256': must be 64 hexadecimal characters"
    )


@pytest.mark.parametrize("size", [0, -1, "12", 1.5])
def test_bad_size(size: object) -> None:
    document = seed_manifest()
    document["binaries"]["linux-amd64"]["size"] = size
    assert refusal(document).startswith("manifest field 'binaries.linux-amd64.size': ")


@pytest.mark.parametrize("percent", [-1, 100.5, "ten"])
def test_bad_rollout(percent: object) -> None:
    assert refusal(seed_manifest(rollout={"percent": percent})).startswith(
        "manifest field 'rollout.percent': "
    )


def test_expires_needs_a_timezone() -> None:
    assert refusal(seed_manifest(expires="2030-01-01T00:00:00")).startswith(
        "manifest field 'expires': "
    )


def test_several_problems_are_counted_on_one_line() -> None:
    message = refusal({"version": "1.0", "binaries": {"x": {}}})
    assert "\n" not in message
    assert message.endswith("(and 1 more problems)")


def test_no_binary_for_platform() -> None:
    document = seed_manifest()
    del document["binaries"]["linux-amd64"]
    with pytest.raises(ManifestError) as caught:
        parse(document).binary_for("linux-amd64")
    assert str(caught.value) == "manifest has no binary for platform linux-amd64 (has: linux-arm64)"


def test_expired_manifest_is_refused() -> None:
    manifest = parse(seed_manifest(expires="2026-01-01T00:00:00Z"))
    check_not_expired(manifest, datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(ExpiredError) as caught:
        check_not_expired(manifest, datetime(2026, 1, 1, tzinfo=UTC))
    assert caught.value.kind == "expired"
    assert isinstance(caught.value, ManifestError)
    assert str(caught.value) == (
        "manifest 0.1.2 expired at 2026-01-01T00:00:00Z (now 2026-01-01T00:00:00Z)"
    )


def test_no_expiry_never_expires() -> None:
    check_not_expired(parse(seed_manifest()), datetime(2999, 1, 1, tzinfo=UTC))


def test_binary_model_directly() -> None:
    assert Binary(url="https://x", sha256=SHA.upper()).sha256 == SHA
