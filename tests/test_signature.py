"""minisign verification (``launcher.signature``), the --public-key option, and interop
with the real ``minisign`` binary both ways."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import minisign_tool
import pytest
from conftest import ROOT
from signing import Key, make_key, minisign_binary, relabel, sign

from launcher import settings, signature
from launcher.errors import ConfigError, SignatureError
from launcher.signature import load_public_key, parse_public_key, verify

BODY = b'{"version": "0.1.2", "binaries": {}}\n'


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Key, Key, Key]:
    d = tmp_path_factory.mktemp("keys")
    return make_key(d, "old"), make_key(d, "new"), make_key(d, "foreign")


def trusted(*ks: Key) -> list[signature.PublicKey]:
    return [load_public_key(k.public) for k in ks]


# ---- verification -----------------------------------------------------------------------


def test_good_prehashed_signature_verifies(keys: tuple[Key, Key, Key]) -> None:
    """An ED signature by a trusted key verifies and yields the key and trusted comment."""
    old, _, _ = keys
    key, comment = verify(BODY, sign(BODY, old, comment="timestamp:5\tfile:x"), trusted(old))
    assert key.id_hex == old.id_hex
    assert comment == "timestamp:5\tfile:x"


def test_key_rotation_accepts_a_signature_by_any_trusted_key(keys: tuple[Key, Key, Key]) -> None:
    """With old and new keys trusted, a manifest signed by the new one verifies."""
    old, new, _ = keys
    key, _ = verify(BODY, sign(BODY, new), trusted(old, new))
    assert key.id_hex == new.id_hex


def test_tampered_data_is_refused(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    with pytest.raises(SignatureError, match=f"^manifest signature does not verify with key "
                                             f"{old.id_hex}$"):
        verify(BODY.replace(b"0.1.2", b"0.1.3"), sign(BODY, old), trusted(old))


def test_foreign_key_is_refused_by_key_id(keys: tuple[Key, Key, Key]) -> None:
    old, new, foreign = keys
    with pytest.raises(SignatureError) as info:
        verify(BODY, sign(BODY, foreign), trusted(old, new))
    assert str(info.value) == (f"no trusted key has id {foreign.id_hex} "
                               f"(trusted: {old.id_hex}, {new.id_hex})")
    assert info.value.describe().startswith("signature: no trusted key has id")


def test_foreign_signature_relabelled_with_a_trusted_key_id_is_refused(
        keys: tuple[Key, Key, Key]) -> None:
    old, _, foreign = keys
    forged = relabel(sign(BODY, foreign), old.loaded().key_id)
    with pytest.raises(SignatureError, match="does not verify with key"):
        verify(BODY, forged, trusted(old))


def test_legacy_signature_is_refused_unless_allowed(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    legacy = sign(BODY, old, legacy=True)
    with pytest.raises(SignatureError, match=r"^legacy Ed signatures are refused"):
        verify(BODY, legacy, trusted(old))
    key, _ = verify(BODY, legacy, trusted(old), allow_legacy=True)
    assert key.id_hex == old.id_hex
    with pytest.raises(SignatureError, match="does not verify"):
        verify(BODY + b" ", legacy, trusted(old), allow_legacy=True)


def test_prehashed_label_on_a_legacy_signature_is_refused(keys: tuple[Key, Key, Key]) -> None:
    """Flipping ``Ed`` to ``ED`` does not turn a legacy signature into a valid one."""
    old, _, _ = keys
    lines = sign(BODY, old, legacy=True).decode().split("\n")
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(b"ED" + raw[2:]).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify(BODY, "\n".join(lines).encode(), trusted(old))


def test_edited_trusted_comment_is_refused(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    lines = sign(BODY, old, comment="timestamp:1").decode().split("\n")
    lines[2] = "trusted comment: timestamp:2"
    with pytest.raises(SignatureError, match=r"^trusted comment signature does not verify"):
        verify(BODY, "\n".join(lines).encode(), trusted(old))


def test_untrusted_comment_and_crlf_do_not_matter(keys: tuple[Key, Key, Key]) -> None:
    """As with minisign: the untrusted comment is free text, CRLF line ends are accepted."""
    old, _, _ = keys
    lines = sign(BODY, old).decode().split("\n")
    lines[0] = "untrusted comment: anything at all"
    verify(BODY, "\r\n".join(lines).encode(), trusted(old))


def test_unknown_algorithm_is_refused(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    lines = sign(BODY, old).decode().split("\n")
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(b"XY" + raw[2:]).decode()
    with pytest.raises(SignatureError, match="unknown signature algorithm"):
        verify(BODY, "\n".join(lines).encode(), trusted(old))


def _malformed(good: bytes) -> dict[str, bytes]:
    lines = good.decode().split("\n")
    return {
        "empty": b"",
        "garbage": b"hello world",
        "binary": bytes(range(256)),
        "not utf-8": b"untrusted comment: \xff\n" + good.split(b"\n", 1)[1],
        "truncated in line 2": good[: len(lines[0]) + 20],
        "three lines": "\n".join(lines[:3]).encode(),
        "line 2 not base64": "\n".join([lines[0], "!!!!", *lines[2:]]).encode(),
        "line 2 too short": "\n".join([lines[0], lines[1][:-8], *lines[2:]]).encode(),
        "line 4 too short": "\n".join([*lines[:3], lines[3][:40]]).encode(),
        "no trusted comment prefix": "\n".join([*lines[:2], "comment: x", lines[3]]).encode(),
        "no untrusted comment": "\n".join(["hello", *lines[1:]]).encode(),
        "extra line": good + b"more\n",
        "control character": "\n".join([*lines[:2], "trusted comment: a\x1bb",
                                        lines[3]]).encode(),
        "stray carriage return": good.replace(b"trusted comment: ", b"trusted comment: \r", 1),
        "oversized": good + b"\n" * (signature.MAX_SIGNATURE_BYTES + 1),
        "public key instead": b"untrusted comment: k\n" + base64.b64encode(b"Ed" + bytes(40)),
    }


def test_malformed_signatures_raise_signature_error_only(keys: tuple[Key, Key, Key]) -> None:
    """Garbage, truncated or oversized .minisig files are SignatureErrors, nothing else."""
    old, _, _ = keys
    for name, data in _malformed(sign(BODY, old)).items():
        with pytest.raises(SignatureError) as info:
            verify(BODY, data, trusted(old))
        assert "\n" not in str(info.value), name


def test_every_single_bit_flip_is_refused_or_harmless(keys: tuple[Key, Key, Key]) -> None:
    """Any bit flipped outside the untrusted comment fails closed with a SignatureError."""
    old, _, _ = keys
    good = sign(BODY, old)
    comment_end = good.index(b"\n")
    for i in range(len(good)):
        for bit in (0x01, 0x20):
            data = bytearray(good)
            data[i] ^= bit
            try:
                verify(BODY, bytes(data), trusted(old))
            except SignatureError:
                continue
            assert i < comment_end, f"flip at byte {i} was accepted"


def test_no_trusted_keys_refuses_everything(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    with pytest.raises(SignatureError, match=r"\(trusted: none\)"):
        verify(BODY, sign(BODY, old), [])


# ---- public key files ---------------------------------------------------------------------


def test_public_key_file_and_bare_line_parse_alike(keys: tuple[Key, Key, Key]) -> None:
    old, _, _ = keys
    text = old.public.read_bytes()
    from_file = parse_public_key(text)
    from_line = parse_public_key(text.splitlines()[1])
    assert from_file.key_id == from_line.key_id == old.loaded().key_id
    assert from_file.key == from_line.key
    assert from_file.id_hex == old.id_hex


@pytest.mark.parametrize(("name", "content"), [
    ("empty", b""),
    ("garbage", b"not a key\n"),
    ("comment only", b"untrusted comment: minisign public key 1234\n"),
    ("bad base64", b"untrusted comment: k\n@@@@\n"),
    ("wrong length", b"untrusted comment: k\n" + base64.b64encode(b"Ed" + bytes(20)) + b"\n"),
    ("wrong algorithm", b"untrusted comment: k\n" + base64.b64encode(b"XX" + bytes(40)) + b"\n"),
    ("secret key", None),
    ("binary", bytes(range(256)) * 2),
    ("oversized", b"untrusted comment: " + b"x" * 5000 + b"\n"),
])
def test_bad_key_files_are_config_errors_naming_the_file(
        name: str, content: bytes | None, keys: tuple[Key, Key, Key], tmp_path: Path) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(keys[0].secret.read_bytes() if content is None else content)
    with pytest.raises(ConfigError) as info:
        load_public_key(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_or_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.pub", tmp_path):
        with pytest.raises(ConfigError, match=f"--public-key {path}: cannot read"):
            load_public_key(path)


# ---- settings and command line ----------------------------------------------------------


def test_public_key_from_flags_environment_and_file(keys: tuple[Key, Key, Key],
                                                    tmp_path: Path) -> None:
    """Repeatable flag, ':'-separated environment variable, TOML list; flags win."""
    old, new, foreign = keys
    base = {"platform": "linux-amd64"}
    s = settings.load({**base, "public_key": [str(old.public), str(new.public)]}, environ={})
    assert s.public_keys == (old.public, new.public)
    env = {"NGINX_MANAGER_PUBLIC_KEY": f"{old.public}:{new.public}"}
    assert settings.load(base, environ=env).public_keys == (old.public, new.public)
    config = tmp_path / "launcher.toml"
    config.write_text(f"public_key = [{json.dumps(str(foreign.public))}]\n")
    assert settings.load(base, environ={}, config_file=config).public_keys == (foreign.public,)
    assert settings.load({**base, "public_key": [str(new.public)]}, environ=env,
                         config_file=config).public_keys == (new.public,)
    assert settings.load(base, environ={}).public_keys == ()
    worker = s.for_worker()
    assert worker["public_keys"] == [str(old.public), str(new.public)]
    json.dumps(worker)


def test_invalid_key_is_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("nonsense\n")
    with pytest.raises(ConfigError, match=f"--public-key {bad}"):
        settings.load({"platform": "linux-amd64", "public_key": [str(bad)]}, environ={})
    config = tmp_path / "c.toml"
    config.write_text("public_key = 5\n")
    with pytest.raises(ConfigError, match="public_key"):
        settings.load({"platform": "linux-amd64"}, environ={}, config_file=config)


def test_cli_exits_2_naming_an_unreadable_key(keys: tuple[Key, Key, Key], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "check", "--manifest-url", "https://x/version.json",
         "--public-key", str(keys[0].public), "--public-key", str(missing),
         "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 2, out
    assert f"--public-key {missing}" in out.stderr


# ---- interop with the real minisign -------------------------------------------------------


def run_minisign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([minisign_binary(), *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)


def test_minisign_made_keys_and_signatures_verify_in_the_launcher(tmp_path: Path) -> None:
    """``minisign -G -W`` keys, ``minisign -S`` signatures: accepted; tampered: refused."""
    out = run_minisign("-G", "-W", "-p", "m.pub", "-s", "m.key", cwd=tmp_path)
    assert out.returncode == 0, out
    manifest = tmp_path / "version.json"
    manifest.write_bytes(BODY)
    out = run_minisign("-S", "-s", "m.key", "-m", "version.json", "-t", "release 0.1.2",
                       cwd=tmp_path)
    assert out.returncode == 0, out
    key = load_public_key(tmp_path / "m.pub")
    sig = (tmp_path / "version.json.minisig").read_bytes()
    assert verify(BODY, sig, [key]) == (key, "release 0.1.2")
    with pytest.raises(SignatureError, match="does not verify"):
        verify(BODY + b"\n", sig, [key])
    lines = sig.decode().split("\n")
    lines[2] = "trusted comment: release 9.9.9"
    with pytest.raises(SignatureError, match="trusted comment"):
        verify(BODY, "\n".join(lines).encode(), [key])
    out = run_minisign("-S", "-l", "-s", "m.key", "-m", "version.json", "-x", "legacy.minisig",
                       cwd=tmp_path)
    assert out.returncode == 0, out
    with pytest.raises(SignatureError, match="legacy Ed signatures are refused"):
        verify(BODY, (tmp_path / "legacy.minisig").read_bytes(), [key])
    # and this tool signs with minisign's unencrypted key
    minisign_tool.sign_file(manifest, tmp_path / "m.key", "by the tool")
    assert run_minisign("-V", "-p", "m.pub", "-m", "version.json", cwd=tmp_path).returncode == 0


def test_tool_made_keys_and_signatures_verify_with_minisign(tmp_path: Path) -> None:
    """The tool's keygen works with ``minisign -S``; its signatures pass ``minisign -V``."""
    key = make_key(tmp_path, "tool")
    manifest = tmp_path / "version.json"
    manifest.write_bytes(BODY)
    target = minisign_tool.sign_file(manifest, key.secret, "release 0.1.2")
    assert target == tmp_path / "version.json.minisig"
    out = run_minisign("-V", "-p", str(key.public), "-m", "version.json", cwd=tmp_path)
    assert out.returncode == 0, out
    assert "release 0.1.2" in out.stdout
    minisign_tool.sign_file(manifest, key.secret)
    out = run_minisign("-V", "-H", "-p", str(key.public), "-m", "version.json", cwd=tmp_path)
    assert out.returncode == 0, out
    assert "file:version.json\thashed" in out.stdout
    manifest.write_bytes(BODY + b" ")
    assert run_minisign("-V", "-p", str(key.public), "-m", "version.json",
                        cwd=tmp_path).returncode != 0
    manifest.write_bytes(BODY)
    out = run_minisign("-S", "-s", str(key.secret), "-m", "version.json", "-x", "by-mini.sig",
                       cwd=tmp_path)
    assert out.returncode == 0, out
    assert verify(BODY, (tmp_path / "by-mini.sig").read_bytes(),
                  [load_public_key(key.public)])[0].id_hex == key.id_hex


# ---- the tool's own refusals --------------------------------------------------------------


def test_tool_refuses_encrypted_damaged_and_existing_keys(tmp_path: Path) -> None:
    key = make_key(tmp_path, "k")
    with pytest.raises(minisign_tool.KeyFileError, match="exists"):
        minisign_tool.keygen(key.secret, key.public)
    assert key.secret.stat().st_mode & 0o777 == 0o600
    lines = key.secret.read_text().splitlines()
    blob = bytearray(base64.b64decode(lines[1]))
    encrypted = bytes(blob[:2]) + b"Sc" + bytes(blob[4:])
    damaged = bytes(blob[:70]) + bytes([blob[70] ^ 1]) + bytes(blob[71:])
    for name, data in (("encrypted", encrypted), ("damaged", damaged)):
        bad = tmp_path / f"{name}.key"
        bad.write_text(f"{lines[0]}\n{base64.b64encode(data).decode()}\n")
        with pytest.raises(minisign_tool.KeyFileError,
                           match="password-protected" if name == "encrypted" else "damaged"):
            minisign_tool.load_secret_key(bad)
    assert minisign_tool.main(["sign", str(tmp_path / "k.pub"), "--secret-key",
                               str(tmp_path / "k.pub")]) == 2
