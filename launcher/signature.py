"""minisign signatures: the manifest's bytes are verified before they are parsed.

Formats (minisign 0.10 and later; see jedisct1/minisign ``src/minisign.h``)::

    public key   untrusted comment: <free text>
                 base64( "Ed" | key_id[8] | ed25519_public_key[32] )
    signature    untrusted comment: <free text, not authenticated>
                 base64( algorithm[2] | key_id[8] | signature[64] )
                 trusted comment: <text>
                 base64( global_signature[64] )

``algorithm`` is ``ED`` (Ed25519 over the BLAKE2b-512 of the data, the only form accepted
by default) or ``Ed`` (legacy: Ed25519 over the data itself). ``global_signature`` is
Ed25519 over ``signature | trusted comment`` and must verify too; the trusted comment is
authenticated but its text is not interpreted (freshness lives inside the signed
manifest, as ``expires``). The key is chosen by key id among the trusted keys, which is
how a key is rotated: trust old and new, sign with the new, later drop the old.

Parsing is standard library only, so the resident can validate key files at start;
``cryptography`` is imported by :func:`verify` alone, in the worker. Every problem with a
signature is a :class:`SignatureError` and every problem with a key file a
:class:`ConfigError`, each one line; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import ConfigError, SignatureError

MAX_SIGNATURE_BYTES = 16 * 1024
MAX_KEY_FILE_BYTES = 4 * 1024
ALG_HASHED = b"ED"
ALG_LEGACY = b"Ed"
_UNTRUSTED = "untrusted comment:"
_TRUSTED = "trusted comment: "


def key_id_hex(key_id: bytes) -> str:
    """A key id as minisign prints it: the 8 bytes as a little-endian uint64, upper hex."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    key: bytes
    origin: str = "public key"  # where it came from, for messages

    @property
    def id_hex(self) -> str:
        return key_id_hex(self.key_id)


@dataclass(frozen=True)
class Signature:
    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: bytes
    global_signature: bytes


def _b64(text: str, size: int, what: str) -> bytes:
    """Strict, canonical base64 (no whitespace, no stray bits), of exactly ``size`` bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise ValueError(f"{what} is not canonical base64")
    if len(raw) != size:
        raise ValueError(f"{what} holds {len(raw)} bytes, expected {size}")
    return raw


def _lines(data: bytes, what: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if any("\r" in line for line in lines):
        raise ValueError(f"{what} has a stray carriage return")
    return lines


def parse_public_key(data: bytes, origin: str = "public key") -> PublicKey:
    """A minisign public key: the ``.pub`` file, or its base64 line alone (``-P``)."""
    try:
        lines = _lines(data, origin)
        if lines and lines[0].startswith(_UNTRUSTED):
            lines = lines[1:]
        if len(lines) != 1:
            raise ValueError(f"{origin} is not a minisign public key (expected a comment "
                             "line and one base64 line)")
        raw = _b64(lines[0].strip(), 42, f"{origin} key line")
        if raw[:2] != ALG_LEGACY:
            raise ValueError(f"{origin} is not an Ed25519 minisign public key")
    except ValueError as exc:
        raise SignatureError(str(exc)) from None
    return PublicKey(key_id=raw[2:10], key=raw[10:42], origin=origin)


def load_public_key(path: Path) -> PublicKey:
    """Read and parse a key file; every problem is a ConfigError naming the file."""
    try:
        with Path(path).open("rb") as fp:
            data = fp.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--public-key {path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a path the OS cannot take (an embedded NUL)
        raise ConfigError(f"--public-key {path!r}: not a usable path: {exc}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"--public-key {path}: larger than {MAX_KEY_FILE_BYTES} bytes, "
                          "not a minisign public key")
    try:
        return parse_public_key(data, origin=str(path))
    except SignatureError as exc:
        raise ConfigError(f"--public-key {path}: {exc}") from None


def parse_signature(data: bytes) -> Signature:
    """A ``.minisig`` file (4 lines; trailing blank lines ignored)."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"signature file larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        lines = _lines(data, "signature file")
        if len(lines) != 4:
            raise ValueError(f"signature file has {len(lines)} lines, expected 4")
        if not lines[0].startswith(_UNTRUSTED):
            raise ValueError("signature file does not start with an untrusted comment")
        raw = _b64(lines[1], 74, "signature line")
        if not lines[2].startswith(_TRUSTED):
            raise ValueError("signature file has no trusted comment line")
        comment = lines[2][len(_TRUSTED):]
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in comment):
            raise ValueError("trusted comment holds control characters")
        global_sig = _b64(lines[3], 64, "global signature line")
    except ValueError as exc:
        raise SignatureError(f"malformed signature: {exc}") from None
    return Signature(algorithm=raw[:2], key_id=raw[2:10], signature=raw[10:74],
                     trusted_comment=comment.encode("utf-8"), global_signature=global_sig)


def verify(
    data: bytes,
    signature: bytes,
    keys: Sequence[PublicKey],
    *,
    allow_legacy: bool = False,
    what: str = "manifest",
) -> tuple[PublicKey, str]:
    """Verify ``signature`` (a .minisig file's bytes) over ``data``; return key and comment.

    Raises SignatureError for anything short of a valid prehashed signature by one of
    ``keys`` whose global signature over the trusted comment verifies too.
    """
    sig = parse_signature(signature)
    if sig.algorithm == ALG_LEGACY:
        if not allow_legacy:
            raise SignatureError("legacy Ed signatures are refused: sign with minisign 0.10 "
                                 "or later, without -l")
        message = data
    elif sig.algorithm == ALG_HASHED:
        import hashlib  # here, not at the top: the resident parses keys at start only

        message = hashlib.blake2b(data, digest_size=64).digest()
    else:
        raise SignatureError(f"unknown signature algorithm {sig.algorithm!r}")
    key = next((k for k in keys if k.key_id == sig.key_id), None)
    if key is None:
        trusted = ", ".join(k.id_hex for k in keys) or "none"
        raise SignatureError(f"no trusted key has id {key_id_hex(sig.key_id)} "
                             f"(trusted: {trusted})")
    if not _ed25519_ok(key.key, sig.signature, message):
        raise SignatureError(f"{what} signature does not verify with key {key.id_hex}")
    if not _ed25519_ok(key.key, sig.global_signature, sig.signature + sig.trusted_comment):
        raise SignatureError(f"trusted comment signature does not verify with key {key.id_hex}")
    return key, sig.trusted_comment.decode("utf-8")


def _ed25519_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
