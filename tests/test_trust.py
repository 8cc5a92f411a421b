"""The pure half of release freshness: serial floors, expiry after a 304, identity, and the
journal's memory of them (``launcher.trust``, ``journal.record_check``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from launcher import trust
from launcher.checks import record_check
from launcher.errors import ExpiredError, ManifestError, RollbackError
from launcher.journal import from_dict, new_state, to_json
from launcher.manifest import Manifest, parse_manifest

SHA = "a" * 64
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def manifest(**fields: Any) -> Manifest:
    doc = {"version": "0.1.2", "binaries": {"linux-amd64": {"url": "https://x/a",
                                                             "sha256": SHA}}, **fields}
    return parse_manifest(json.dumps(doc).encode())


def test_floor_is_the_highest_serial_of_the_keys_trusted_now() -> None:
    kept = {"serials": {"AAAA": 10, "BBBB": 99, "CCCC": True, "DDDD": "7"}}
    assert trust.floor(kept, ["AAAA"], None) == 10
    assert trust.floor(kept, ["AAAA", "BBBB"], None) == 99
    assert trust.floor(kept, ["CCCC", "DDDD"], None) is None, "junk in the journal counts not"
    assert trust.floor(kept, ["AAAA"], 50) == 50, "the seed's floor"
    assert trust.floor(None, ["AAAA"], None) is None


def test_a_lower_serial_is_a_replay_an_equal_one_the_same_release() -> None:
    trust.check_serial(manifest(serial=10), 10, required=True)
    trust.check_serial(manifest(serial=11), 10, required=True)
    with pytest.raises(RollbackError, match="serial 9, below 10 already accepted") as info:
        trust.check_serial(manifest(serial=9), 10, required=True)
    assert info.value.describe().startswith("rollback: ")


def test_no_serial_past_a_floor_is_refused_when_signatures_are_required() -> None:
    with pytest.raises(RollbackError, match="has no serial"):
        trust.check_serial(manifest(), 5, required=True)
    trust.check_serial(manifest(), 5, required=False)
    trust.check_serial(manifest(), None, required=True)  # first contact: nothing to compare


@pytest.mark.parametrize(("fields", "channel", "message"), [
    ({"product": "other-product"}, "stable", "for product 'other-product'"),
    ({"channel": "beta"}, "stable", "for channel 'beta', this launcher follows 'stable'"),
    ({}, "beta", "for channel 'stable', this launcher follows 'beta'"),
])
def test_wrong_software_is_a_manifest_error(fields: dict[str, Any], channel: str,
                                            message: str) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        trust.check_identity(manifest(**fields), channel=channel)
    assert info.value.describe().startswith("manifest: ")


def test_right_product_and_channel_pass() -> None:
    trust.check_identity(manifest(product=trust.PRODUCT, channel="beta"), channel="beta")
    trust.check_identity(manifest(), channel="stable")  # a seed-only manifest: stable


def test_an_accepted_manifest_expires_also_behind_a_304() -> None:
    kept = {"accepted": {"version": "0.1.2", "expires": "2026-02-01T00:00:00Z"}}
    with pytest.raises(ExpiredError, match=re.escape("0.1.2 accepted earlier expired at "
                                                     "2026-02-01T00:00:00Z")) as info:
        trust.check_still_fresh(kept, NOW)
    assert info.value.describe().startswith("expired: ")
    trust.check_still_fresh(kept, datetime(2026, 1, 31, tzinfo=UTC))
    trust.check_still_fresh({"accepted": {"expires": None}}, NOW)
    trust.check_still_fresh({"accepted": {"expires": "not a date"}}, NOW)
    trust.check_still_fresh(None, NOW)


@pytest.mark.parametrize("serial", [-1, 1 << 63, 1.0, "5", True])
def test_serial_must_be_a_64_bit_whole_number(serial: object) -> None:
    with pytest.raises(ManifestError, match="'serial'"):
        manifest(serial=serial)


def test_duplicate_keys_at_any_level_are_refused() -> None:
    """Two parsers could read two different releases out of one signed document."""
    top = b'{"version": "0.1.2", "version": "9.9.9", "binaries": {}}'
    inner = (b'{"version": "0.1.2", "binaries": {"linux-amd64": {"url": "https://x/a", '
             b'"sha256": "' + SHA.encode() + b'", "url": "https://evil/b"}}}')
    for body in (top, inner):
        with pytest.raises(ManifestError, match="appears twice") as info:
            parse_manifest(body)
        assert info.value.describe().startswith("manifest: ")


def result(serial: int | None, key: str = "AAAA", **more: Any) -> dict[str, Any]:
    return {"outcome": "none", "signatures": "required",
            "accepted": {"version": "0.1.2", "serial": serial, "key": key,
                         "expires": "2026-04-01T00:00:00Z", **more}}


def test_the_journal_keeps_the_highest_serial_per_key_and_never_lowers_it() -> None:
    state = record_check(new_state(), result(10), "t1")
    state = record_check(state, result(7), "t2")  # a lower one reported: ignored for the floor
    state = record_check(state, result(3, key="BBBB"), "t3")
    t = state.extra["trust"]
    assert t["serials"] == {"AAAA": 10, "BBBB": 3}
    assert t["accepted"] == {"version": "0.1.2", "serial": 3, "key": "BBBB",
                             "expires": "2026-04-01T00:00:00Z", "at": "t3"}
    assert state.extra["signatures"] == "required"
    again = from_dict(json.loads(to_json(state)))
    assert again.extra == state.extra, "the journal round-trips it"


def test_an_error_result_changes_no_trust() -> None:
    state = record_check(new_state(), result(10), "t1")
    after = record_check(state, {"outcome": "error", "error": "x", "signatures": "off"}, "t2")
    assert after.extra["trust"] == state.extra["trust"]
    assert after.extra["signatures"] == "off"
