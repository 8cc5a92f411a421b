"""Attacks on release authenticity and freshness, each performed against a real launcher and a
real server on loopback: replay (rollback), a fresh host sent back, a serial-less replay,
indefinite freeze behind 304s, wrong product, and the recovery after each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import freshness
import pytest
from conftest import ROOT, Launcher
from hostile import agent_pid, assert_untouched, quick_args, sha, sleeper, wait_committed
from release_server import ReleaseServer, Route
from signing import Key, make_key, sign


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def signed_manifest(srv: ReleaseServer, version: str, binary: Path, key: Key,
                    **fields: Any) -> tuple[bytes, bytes]:
    """A manifest for ``binary`` served at /bin/<version>, with ``fields``; and its .minisig."""
    entry = {"url": srv.url(f"/bin/{version}"), "sha256": sha(binary),
             "size": binary.stat().st_size}
    doc = {"version": version, "product": "nginx-manager-agent",
           "binaries": {"linux-amd64": entry}, **fields}
    body = json.dumps({k: v for k, v in doc.items() if v is not None}).encode()
    return body, sign(body, key)


def serve(srv: ReleaseServer, pair: tuple[bytes, bytes], etag: str | None = None,
          path: str = "/version.json") -> None:
    srv.publish(path, Route(body=pair[0], etag=etag))
    srv.publish(path + ".minisig", Route(body=pair[1]))


def status_json(state_dir: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "launcher", "status", "--json", "--state-dir",
                          str(state_dir)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_replayed_older_signed_manifest_is_refused(launcher: Callable[..., Launcher],
                                                   key: Key, tmp_path: Path) -> None:
    """0.2.0 (serial 10) was withdrawn by a re-issue pointing at 0.1.1 (serial 20); replaying
    the withdrawn manifest — validly signed — must not install 0.2.0."""
    with ReleaseServer() as srv:
        withdrawn_bin, good_bin = sleeper(tmp_path, "0.2.0"), sleeper(tmp_path, "0.1.1")
        srv.publish("/bin/0.2.0", Route(body=withdrawn_bin.read_bytes()))
        srv.publish("/bin/0.1.1", Route(body=good_bin.read_bytes()))
        withdrawn = signed_manifest(srv, "0.2.0", withdrawn_bin, key, serial=10)
        serve(srv, signed_manifest(srv, "0.1.1", good_bin, key, serial=20))
        lch = launcher()
        args = quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"), key.public)
        lch.start(*args, agent_args=())
        wait_committed(lch, "0.1.1")
        assert lch.state()["extra"]["trust"]["serials"] == {key.id_hex: 20}
        pid = agent_pid(lch, "0.1.1")
        serve(srv, withdrawn)
        st = assert_untouched(lch, pid, "0.1.1", "rollback: manifest 0.2.0 has serial 10, "
                              "below 20")
        assert st["extra"]["trust"]["serials"] == {key.id_hex: 20}, "the floor never goes down"
        assert status_json(lch.state_dir)["serial"] == 20
        unsigned_era = signed_manifest(srv, "0.2.0", withdrawn_bin, key)  # no serial at all
        serve(srv, unsigned_era)
        assert_untouched(lch, pid, "0.1.1", "rollback: manifest 0.2.0 has no serial")
        assert lch.stop() == 0


@pytest.mark.parametrize("floor", ["min-serial", "none"])
def test_a_fresh_host_is_not_sent_back_past_its_seed_floor(
        floor: str, launcher: Callable[..., Launcher], key: Key, tmp_path: Path) -> None:
    """A new pod (empty state dir) whose image says --min-serial 20 refuses the serial-10
    replay; without the floor the same replay installs (what the floor is for)."""
    with ReleaseServer() as srv:
        withdrawn_bin = sleeper(tmp_path, "0.2.0")
        srv.publish("/bin/0.2.0", Route(body=withdrawn_bin.read_bytes()))
        serve(srv, signed_manifest(srv, "0.2.0", withdrawn_bin, key, serial=10))
        lch = launcher()
        over = {"--min-serial": "20"} if floor == "min-serial" else {}
        args = quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"), key.public,
                          **over)
        lch.start(*args, agent_args=())
        if floor == "none":
            wait_committed(lch, "0.2.0")
        else:
            pid = agent_pid(lch, "0.1.0")
            assert_untouched(lch, pid, "0.1.0", "rollback: manifest 0.2.0 has serial 10, "
                             "below 20")
        assert lch.stop() == 0


def test_a_build_whose_version_is_unknown_keeps_the_floor(
        launcher: Callable[..., Launcher], key: Key, tmp_path: Path) -> None:
    """State says serial 20 was accepted, bin/agent cannot say its version: a replay of
    serial 10 is still refused (the floor never depends on the build at rest)."""
    state_dir = tmp_path / "state"
    (state_dir / "bin").mkdir(parents=True)
    mute = state_dir / "bin" / "agent"
    mute.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 3\nexec sleep 100000\n")
    mute.chmod(0o755)
    (state_dir / "state.json").write_text(json.dumps({
        "schema": 1, "host_id": "h", "phase": "committed",
        "current": {"version": "unknown", "sha256": sha(mute)},
        "extra": {"trust": {"serials": {key.id_hex: 20}}}}))
    with ReleaseServer() as srv:
        withdrawn_bin = sleeper(tmp_path, "0.2.0")
        srv.publish("/bin/0.2.0", Route(body=withdrawn_bin.read_bytes()))
        serve(srv, signed_manifest(srv, "0.2.0", withdrawn_bin, key, serial=10))
        lch = launcher(state_dir)
        args = [a for a in quick_args(srv.url("/version.json"), mute, key.public)]
        seed_at = args.index("--seed-binary")
        del args[seed_at:seed_at + 2]
        lch.start(*args, agent_args=())
        st = lch.wait_state(lambda s: (s.get("last_error") or "").startswith("rollback:")
                            and s.get("consecutive_failures", 0) >= 2, what="two refusals")
        assert st["current"]["version"] == "unknown" and st["bad"] == []
        assert (state_dir / "bin" / "agent").read_bytes() == mute.read_bytes()
        assert lch.stop() == 0


def test_a_mirror_answering_304_forever_cannot_hide_an_expired_manifest(
        launcher: Callable[..., Launcher], key: Key, tmp_path: Path) -> None:
    """Freeze: the accepted manifest's expiry is re-checked behind every 304; past it,
    ``expired:`` and ``stale_since``; a re-signed manifest (release_tool resign) recovers."""
    with ReleaseServer() as srv:
        seed = sleeper(tmp_path, "0.1.0")
        srv.publish("/bin/0.1.0", Route(body=seed.read_bytes()))
        # Long enough for a loaded machine to start the launcher and see one 304 first.
        expires = (datetime.now(UTC) + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        serve(srv, signed_manifest(srv, "0.1.0", seed, key, serial=1, expires=expires),
              etag='"frozen"')
        lch = launcher()
        lch.start(*quick_args(srv.url("/version.json"), seed, key.public), agent_args=())
        pid = agent_pid(lch, "0.1.0")
        lch.wait_log("manifest not modified")
        st = lch.wait_state(lambda s: s.get("last_check_at") is not None and s.get("etag"),
                            what="validators of the accepted manifest kept")
        assert st["last_error"] is None
        assert status_json(lch.state_dir)["stale_since"] is None
        st = assert_untouched(lch, pid, "0.1.0", "expired: manifest 0.1.0", timeout=20)
        status = status_json(lch.state_dir)
        assert status["stale_since"] == expires and status["expires"] == expires
        assert "304" in lch.log() or "not modified" in lch.log()
        # The operator re-issues the release: same build, new expiry, higher serial.
        release_dir = tmp_path / "republish"
        release_dir.mkdir()
        (release_dir / "version.json").write_bytes(srv.routes["/version.json"].body)
        freshness.resign_manifest(release_dir / "version.json", key.secret)
        fresh = json.loads((release_dir / "version.json").read_bytes())
        assert fresh["serial"] > 1 and fresh["expires"] > expires
        serve(srv, ((release_dir / "version.json").read_bytes(),
                    (release_dir / "version.json.minisig").read_bytes()), etag='"fresh"')
        lch.wait_state(lambda s: s.get("last_error") is None, what="the fresh manifest")
        status = status_json(lch.state_dir)
        assert status["stale_since"] is None and status["serial"] == fresh["serial"]
        assert agent_pid(lch, "0.1.0") == pid
        assert lch.stop() == 0


def test_manifest_for_another_product_is_refused(launcher: Callable[..., Launcher],
                                                 key: Key, tmp_path: Path) -> None:
    """Wrong software signed by the same key (another product's release): ``manifest:``."""
    with ReleaseServer() as srv:
        other = sleeper(tmp_path, "0.2.0")
        srv.publish("/bin/0.2.0", Route(body=other.read_bytes()))
        serve(srv, signed_manifest(srv, "0.2.0", other, key, serial=5, product="other-agent"))
        lch = launcher()
        lch.start(*quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                              key.public), agent_args=())
        pid = agent_pid(lch, "0.1.0")
        assert_untouched(lch, pid, "0.1.0", "manifest: manifest is for product 'other-agent'")
        serve(srv, signed_manifest(srv, "0.2.0", other, key, serial=6))
        wait_committed(lch, "0.2.0")
        assert lch.stop() == 0


def worker_check(srv: ReleaseServer, tmp_path: Path, keys: tuple[Path, ...],
                 trust: dict[str, Any] | None = None, **settings: Any) -> Any:
    from launcher import worker
    from launcher.settings import Settings

    s = Settings(manifest_url=srv.url("/version.json"), platform="linux-amd64",
                 state_dir=tmp_path, allow_http=True, public_keys=keys, **settings)
    return worker.run_check({"settings": s.for_worker(), "current": None, "bad": [],
                             "host_id": "h", "stage": False, "trust": trust})


def test_fast_forward_by_a_dropped_key_holds_nothing_back(key: Key, tmp_path: Path) -> None:
    """A compromised key signed serial 2^63 - 1 and hosts took it; once the operator drops
    that key, the new key's ordinary serials install again (and the old key is refused)."""
    new = make_key(tmp_path / "keys", "new")
    with ReleaseServer() as srv:
        binary = sleeper(tmp_path, "0.1.1")
        serve(srv, signed_manifest(srv, "0.1.1", binary, new, serial=int(time.time())))
        poisoned = {"serials": {key.id_hex: (1 << 63) - 1}}
        held = worker_check(srv, tmp_path, (key.public, new.public), trust=poisoned)
        assert held.error_kind == "rollback", "while the compromised key is trusted, it holds"
        freed = worker_check(srv, tmp_path, (new.public,), trust=poisoned)
        assert freed.outcome == "install", freed
        assert freed.accepted["key"] == new.id_hex
        serve(srv, signed_manifest(srv, "0.1.2", binary, key, serial=(1 << 63) - 1))
        dropped = worker_check(srv, tmp_path, (new.public,), trust=poisoned)
        assert dropped.error_kind == "signature" and "no trusted key" in dropped.error
        huge = signed_manifest(srv, "0.1.2", binary, new, serial=1 << 63)
        serve(srv, huge)
        assert worker_check(srv, tmp_path, (new.public,)).error_kind == "manifest"


def test_manifest_for_another_channel_is_refused(key: Key, tmp_path: Path) -> None:
    """A validly signed beta manifest served to a stable host, and the reverse (a beta host
    reads channels/beta/version.json beside the main manifest)."""
    with ReleaseServer() as srv:
        binary = sleeper(tmp_path, "0.3.0b1")
        beta = signed_manifest(srv, "0.3.0b1", binary, key, serial=3, channel="beta")
        serve(srv, beta)
        refused = worker_check(srv, tmp_path, (key.public,))
        assert refused.error == ("manifest: manifest 0.3.0b1 is for channel 'beta', this "
                                 "launcher follows 'stable' (--channel)")
        serve(srv, beta, path="/channels/beta/version.json")
        assert worker_check(srv, tmp_path, (key.public,), channel="beta").outcome == "install"
        serve(srv, signed_manifest(srv, "0.3.0", binary, key, serial=4),
              path="/channels/beta/version.json")
        assert worker_check(srv, tmp_path, (key.public,), channel="beta").error_kind == \
            "manifest"


def test_a_304_cannot_keep_a_manifest_accepted_under_a_key_no_longer_trusted(
        tmp_path: Path) -> None:
    """*unit*: accepted unsigned, or under a key since dropped (rotated out, compromised):
    the validators are not sent, so a mirror's 304 cannot keep that manifest; the manifest is
    fetched in full and its signature checked again. (Found by review.)"""
    import httpx

    from launcher.sources.http import make_client
    from launcher.worker import run_check

    new = make_key(tmp_path, "new")
    conditional: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        conditional.append("If-None-Match" in request.headers)
        return httpx.Response(304) if conditional[-1] else httpx.Response(500)

    client = make_client(transport=httpx.MockTransport(handler))
    for old_key in ("unsigned", "AAAAAAAAAAAAAAAA"):
        trust = {"serials": {old_key: 5}, "accepted": {
            "version": "0.9.0", "serial": 5, "key": old_key, "expires": "2099-01-01T00:00:00Z"}}
        request = {"settings": {"manifest_url": "https://h/version.json",
                                "public_keys": [str(new.public)], "platform": "linux-amd64",
                                "max_binary_bytes": 1 << 20, "download_deadline_s": 10,
                                "min_speed_bps": 1},
                   "trust": trust, "current": {"version": "0.9.0", "sha256": "0" * 64},
                   "bad": [], "host_id": "h", "etag": '"e1"', "last_modified": None,
                   "stage": False}
        result = run_check(request, client=client)
        assert conditional[-1] is False, "the validators were sent"
        assert result.outcome == "error", result
