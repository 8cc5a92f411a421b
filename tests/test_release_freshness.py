"""The release tool places every manifest in time: serial, expires, product, channel; and
``resign`` re-issues one with a new expiry and a higher serial, without a new build."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import release_tool
from conftest import ROOT, script_agent
from signing import make_key

from launcher.signature import load_public_key, verify


def test_release_tool_writes_serial_expiry_and_identity(tmp_path: Path) -> None:
    script = script_agent(tmp_path / "agent", "0.1.2", "exit 0")
    before = int(time.time())
    first = release_tool.publish("0.1.2", tmp_path / "rel", "http://x", binary=script)
    assert first["product"] == "nginx-manager-agent" and first["channel"] == "stable"
    assert first["serial"] >= before
    expires = datetime.fromisoformat(first["expires"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    second = release_tool.publish("0.1.3", tmp_path / "rel", "http://x", binary=script,
                                  expires_in_days=None)
    assert second["serial"] > first["serial"] and "expires" not in second
    with pytest.raises(release_tool.ReleaseError, match="not above the published serial"):
        release_tool.publish("0.1.4", tmp_path / "rel", "http://x", binary=script,
                             serial=second["serial"])
    assert json.loads((tmp_path / "rel" / "version.json").read_bytes()) == second


def test_resign_gives_a_new_expiry_and_a_higher_serial(tmp_path: Path) -> None:
    """A GitHub asset set: the manifest, its signature and its SHA256SUMS line are renewed;
    the binaries are not touched."""
    key = make_key(tmp_path / "keys", "release")
    script = script_agent(tmp_path / "agent", "0.1.2", "exit 0")
    assets = tmp_path / "assets"
    old = release_tool.write_assets("0.1.2", assets, binary=script, sign_key=key.secret,
                                    base_url="https://x/dl", expires_in_days=1)
    binary_before = (assets / "agent-linux-amd64").read_bytes()
    out = subprocess.run([sys.executable, str(ROOT / "packaging" / "release_tool.py"),
                          "resign", "--manifest", str(assets / "version.json"),
                          "--sign-key", str(key.secret), "--expires-in", "10"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out
    body = (assets / "version.json").read_bytes()
    new = json.loads(body)
    assert new["serial"] > old["serial"] and new["expires"] > old["expires"]
    assert {k: v for k, v in new.items() if k not in ("serial", "expires")} == \
        {k: v for k, v in old.items() if k not in ("serial", "expires")}
    verify(body, (assets / "version.json.minisig").read_bytes(),
           [load_public_key(key.public)])
    sums = (assets / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(body).hexdigest()}  version.json\n" in sums
    assert (assets / "agent-linux-amd64").read_bytes() == binary_before
    assert f"serial={new['serial']}" in out.stdout


def test_resign_refuses_what_it_cannot_renew(tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "release")
    (tmp_path / "rel").mkdir()
    cmd = [sys.executable, str(ROOT / "packaging" / "release_tool.py"), "resign",
           "--release-dir", str(tmp_path / "rel"), "--sign-key", str(key.secret)]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "rel" / "version.json").write_text('{"version": "0.1.2", "serial": 50}')
    lower = subprocess.run([*cmd, "--serial", "50"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert lower.returncode == 2 and "not above the published serial 50" in lower.stderr
    assert json.loads((tmp_path / "rel" / "version.json").read_text())["serial"] == 50
    assert not (tmp_path / "rel" / "version.json.minisig").exists(), "nothing half-written"
