#!/usr/bin/env python3
"""Make minisign keys and signatures without the minisign binary, in minisign's formats.

    python3 packaging/minisign_tool.py keygen --secret-key FILE --public-key FILE [--force]
    python3 packaging/minisign_tool.py sign FILE --secret-key KEY [--trusted-comment TEXT]

``keygen`` writes a public key exactly as ``minisign -G`` does and an *unencrypted* secret
key exactly as ``minisign -G -W`` does (``Ed`` | kdf ``\\0\\0`` | ``B2`` | zero salt and
limits | key id | Ed25519 secret | BLAKE2b-256 checksum), so ``minisign -S -s FILE`` signs with
it and this tool signs with keys made by ``minisign -G -W``. Encrypted (scrypt) secret keys
are refused: sign with ``minisign -S`` itself. Keep the secret key offline, mode 0600.

``sign`` writes ``FILE.minisig`` in the prehashed ``ED`` form (Ed25519 over BLAKE2b-512 of
the file), with minisign's default trusted comment unless one is given; it is replaced
atomically. Needs ``cryptography`` (a dependency of the launcher); no other package.

Exit codes: 0 done; 2 bad arguments or key file; 1 anything else.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIG_ALG = b"Ed"
SIG_ALG_HASHED = b"ED"
KDF_NONE = b"\0\0"
KDF_SCRYPT = b"Sc"
CHK_ALG = b"B2"
SECRET_KEY_BYTES = 158
UNTRUSTED = "untrusted comment: "
TRUSTED = "trusted comment: "


class KeyFileError(Exception):
    """A key file that cannot be used (the caller's input is at fault)."""


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    private: Ed25519PrivateKey

    @property
    def id_hex(self) -> str:
        return key_id_hex(self.key_id)


def key_id_hex(key_id: bytes) -> str:
    """A key id as minisign prints it: little-endian uint64, upper-case hex."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _checksum(key_id: bytes, secret: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + key_id + secret, digest_size=32).digest()


def _write_new(path: Path, text: str, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: pass --force to overwrite it") from None
    with os.fdopen(fd, "w") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.chmod(path, mode)


def keygen(secret_path: Path, public_path: Path, *, force: bool = False) -> str:
    """Write a new key pair; return its key id (hex, as minisign prints it)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes_raw()
    key_id = os.urandom(8)
    secret = seed + public  # libsodium's 64-byte secret key
    blob = (SIG_ALG + KDF_NONE + CHK_ALG + bytes(32) + bytes(8) + bytes(8)
            + key_id + secret + _checksum(key_id, secret))
    assert len(blob) == SECRET_KEY_BYTES
    ident = key_id_hex(key_id)
    _write_new(Path(secret_path),
               f"{UNTRUSTED}minisign unencrypted secret key {ident}\n"
               f"{base64.b64encode(blob).decode()}\n", 0o600, force)
    _write_new(Path(public_path),
               f"{UNTRUSTED}minisign public key {ident}\n"
               f"{base64.b64encode(SIG_ALG + key_id + public).decode()}\n", 0o644, force)
    return ident


def load_secret_key(path: Path) -> SecretKey:
    """An unencrypted minisign secret key (``minisign -G -W`` or :func:`keygen`)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read secret key {path}: {exc}") from exc
    if len(lines) < 2 or not lines[0].startswith(UNTRUSTED):
        raise KeyFileError(f"{path} is not a minisign secret key")
    try:
        blob = base64.b64decode(lines[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path} is not a minisign secret key (bad base64)") from None
    if len(blob) != SECRET_KEY_BYTES or blob[:2] != SIG_ALG or blob[4:6] != CHK_ALG:
        raise KeyFileError(f"{path} is not an Ed25519 minisign secret key")
    if blob[2:4] == KDF_SCRYPT:
        raise KeyFileError(f"{path} is password-protected: sign with `minisign -S -s {path}`, "
                        "or use a key made with `minisign -G -W`")
    if blob[2:4] != KDF_NONE:
        raise KeyFileError(f"{path}: unknown key derivation {blob[2:4]!r}")
    key_id, secret, checksum = blob[54:62], blob[62:126], blob[126:158]
    # minisign 0.11 leaves the checksum of an unencrypted key zero; later versions fill it.
    if checksum != bytes(32) and not hmac.compare_digest(checksum, _checksum(key_id, secret)):
        raise KeyFileError(f"{path}: checksum mismatch, the key is damaged")
    private = Ed25519PrivateKey.from_private_bytes(secret[:32])
    if private.public_key().public_bytes_raw() != secret[32:]:
        raise KeyFileError(f"{path}: secret and public halves do not match, the key is damaged")
    return SecretKey(key_id=key_id, private=private)


def signature_text(data: bytes, key: SecretKey, trusted_comment: str) -> str:
    """The ``.minisig`` content for ``data``, prehashed (``ED``)."""
    if "\n" in trusted_comment or "\r" in trusted_comment:
        raise KeyFileError("the trusted comment must be one line")
    digest = hashlib.blake2b(data, digest_size=64).digest()
    sig = key.private.sign(digest)
    global_sig = key.private.sign(sig + trusted_comment.encode())
    return (f"{UNTRUSTED}signature from minisign secret key\n"
            f"{base64.b64encode(SIG_ALG_HASHED + key.key_id + sig).decode()}\n"
            f"{TRUSTED}{trusted_comment}\n"
            f"{base64.b64encode(global_sig).decode()}\n")


def default_trusted_comment(name: str, now: float | None = None) -> str:
    """minisign's own default: ``timestamp:<unix>\\tfile:<name>\\thashed``."""
    return f"timestamp:{int(time.time() if now is None else now)}\tfile:{name}\thashed"


def write_signature(target: Path, text: str) -> None:
    """Replace ``target`` atomically with ``text`` (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sign_file(path: Path, secret_key: Path, trusted_comment: str | None = None) -> Path:
    """Sign ``path`` into ``path.minisig``; return the signature's path."""
    key = load_secret_key(secret_key)
    path = Path(path)
    text = signature_text(path.read_bytes(), key,
                          trusted_comment or default_trusted_comment(path.name))
    target = path.with_name(path.name + ".minisig")
    write_signature(target, text)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minisign_tool.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="new key pair (unencrypted secret key, mode 0600)")
    gen.add_argument("--secret-key", type=Path, required=True, metavar="FILE")
    gen.add_argument("--public-key", type=Path, required=True, metavar="FILE")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    sign = sub.add_parser("sign", help="write FILE.minisig (prehashed ED form)")
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--secret-key", type=Path, required=True, metavar="KEY")
    sign.add_argument("--trusted-comment", metavar="TEXT")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            ident = keygen(args.secret_key, args.public_key, force=args.force)
            print(f"key {ident}: secret key {args.secret_key} (keep it offline), "
                  f"public key {args.public_key}")
        else:
            target = sign_file(args.file, args.secret_key, args.trusted_comment)
            print(f"signed {args.file} into {target}")
    except KeyFileError as exc:
        print(f"minisign_tool: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"minisign_tool: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
