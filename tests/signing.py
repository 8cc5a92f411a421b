"""Test keys and signatures in minisign's formats, made with packaging/minisign_tool.py.

    key = make_key(tmp_path, "release")      # key.public (file), key.secret (file)
    sig = sign(body, key)                    # .minisig bytes, prehashed ED form
    sig = sign(body, key, legacy=True)       # legacy Ed form, which the launcher refuses

The real ``minisign`` binary is found by :func:`minisign_binary`: under ``CI=true`` its
absence fails the test (CI installs it), elsewhere it skips.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path

import minisign_tool  # packaging/, on sys.path through conftest
from conftest import unavailable


@dataclass(frozen=True)
class Key:
    public: Path
    secret: Path

    def loaded(self) -> minisign_tool.SecretKey:
        return minisign_tool.load_secret_key(self.secret)

    @property
    def id_hex(self) -> str:
        return self.loaded().id_hex


def make_key(directory: Path, name: str) -> Key:
    directory.mkdir(parents=True, exist_ok=True)
    key = Key(public=directory / f"{name}.pub", secret=directory / f"{name}.key")
    minisign_tool.keygen(key.secret, key.public)
    return key


def sign(data: bytes, key: Key, *, comment: str = "timestamp:1\tfile:version.json\thashed",
         legacy: bool = False) -> bytes:
    secret = key.loaded()
    if not legacy:
        return minisign_tool.signature_text(data, secret, comment).encode()
    sig = secret.private.sign(data)
    global_sig = secret.private.sign(sig + comment.encode())
    return (f"untrusted comment: legacy\n"
            f"{base64.b64encode(b'Ed' + secret.key_id + sig).decode()}\n"
            f"trusted comment: {comment}\n"
            f"{base64.b64encode(global_sig).decode()}\n").encode()


def relabel(signature: bytes, key_id: bytes) -> bytes:
    """The same signature claiming another key id."""
    lines = signature.decode().split("\n")
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(raw[:2] + key_id + raw[10:]).decode()
    return "\n".join(lines).encode()


def minisign_binary() -> str:
    found = shutil.which("minisign")
    if found is None:
        unavailable("minisign is not installed (apt-get install -y minisign)")
    assert found is not None
    return found
