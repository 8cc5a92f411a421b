"""certifi's bundle as an OpenSSL hashed directory, so a no-change check loads one CA, not 117.

Loading certifi's bundle (``cafile=``) parses every certificate in it, about a quarter of
a no-change https check's CPU (``bench/checkcost.py``). OpenSSL's hashed-directory lookup
(``capath=``) reads only the certificates whose subject the chain names, found by file
name: ``HASH.N``, HASH being ``X509_NAME_hash`` of the subject (SHA-1 over the name's
canonical encoding, first four bytes little-endian), as ``openssl rehash`` names them.

The directory is built from the bundle's own bytes by a full check (which has loaded the
bundle and ``cryptography`` anyway) into ``<state dir>/run/ca/<sha256 of the bundle>``,
private to the launcher's user (it is not built in a ``run/`` that belongs to another user,
such as root's ``check`` on the service's state dir, and one that cannot be read is not
used), written whole before it is renamed into place. The
no-change check uses it only while the bundle still has that sha256, so it trusts exactly
the certificates the full check trusts; a new certifi gets a new directory, and the old one
is removed. A directory that fails to verify a server costs nothing but the fall-back: the
full check through httpx with the bundle itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from launcher.files import fsync_dir

CA_DIR = "ca"  # under <state dir>/run
# Tags of the string types OpenSSL canonicalises (ASN1_MASK_CANON) and how to read them.
_TEXT = {0x0C: "utf-8", 0x13: "latin-1", 0x14: "latin-1", 0x16: "latin-1", 0x1A: "latin-1",
         0x1C: "utf-32-be", 0x1E: "utf-16-be"}
_UTF8STRING, _SET, _SEQUENCE = 0x0C, 0x31, 0x30
_SPACE = " \t\n\v\f\r"


def key(bundle: bytes) -> str:
    return hashlib.sha256(bundle).hexdigest()


def find(state_dir: str, bundle_path: str) -> str | None:
    """The hashed directory for the bundle as it is now, if a full check built it."""
    try:
        with open(bundle_path, "rb") as f:
            here = Path(state_dir, "run", CA_DIR, key(f.read()))
        # is_file() raises on EACCES: a directory another user built (root's `check`)
        return str(here) if (here / "complete").is_file() else None
    except OSError:
        return None


def build(state_dir: str, bundle_path: str) -> Path | None:
    """Write the hashed directory for ``bundle_path`` (once per bundle); None when it cannot
    be written (the check goes on: the no-change check then loads the bundle)."""
    import shutil  # here: the no-change check needs only find()
    import ssl

    run = Path(state_dir, "run")
    root = run / CA_DIR
    temp: Path | None = None
    try:
        bundle = Path(bundle_path).read_bytes()
        target = root / key(bundle)
        if (target / "complete").is_file():
            return target
        with contextlib.suppress(FileExistsError):
            os.mkdir(run, 0o700)  # as permissions.private_dir makes it; no state dir made
        if os.stat(run).st_uid != os.geteuid():
            return None  # another user's (root running `check` on the service's state dir)
        root.mkdir(mode=0o700, exist_ok=True)
        temp = root / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(mode=0o700)
        taken: set[str] = set()
        for pem in certificates(bundle.decode("ascii")):
            digest = subject_hash(subject_of(ssl.PEM_cert_to_DER_cert(pem)))
            n = 0
            while f"{digest}.{n}" in taken:
                n += 1
            taken.add(f"{digest}.{n}")
            _write_synced(temp / f"{digest}.{n}", pem.encode("ascii"))
        _write_synced(temp / "complete", f"{len(taken)}\n".encode())
        fsync_dir(temp)  # a power cut never leaves a "complete" directory of empty files
        os.rename(temp, target)
        fsync_dir(root)
    except (OSError, ValueError):  # UnicodeDecodeError and malformed DER are ValueErrors
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        return None
    for old in root.iterdir():  # earlier bundles' directories, and temp dirs left by a kill
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:  # a file object writes it all
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def certificates(bundle: str) -> list[str]:
    """The PEM certificates of a bundle, each with its BEGIN and END lines."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    found = []
    at = bundle.find(begin)
    while at != -1:
        stop = bundle.find(end, at)
        if stop == -1:
            raise ValueError("a certificate in the bundle has no END line")
        found.append(bundle[at:stop + len(end)] + "\n")
        at = bundle.find(begin, stop)
    return found


def subject_of(cert_der: bytes) -> bytes:
    """A certificate's subject Name, DER-encoded as it is in the certificate."""
    _, cert, _ = _read(cert_der)
    _, tbs, _ = _read(cert)
    fields: list[tuple[int, bytes]] = []
    while tbs and len(fields) < 6:
        start = tbs
        tag, _, tbs = _read(tbs)
        fields.append((tag, start[:len(start) - len(tbs)]))
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields.pop(0)
    if len(fields) < 5:
        raise ValueError("not a DER certificate")
    return fields[4][1]  # serial, signature algorithm, issuer, validity, subject


def subject_hash(name_der: bytes) -> str:
    """OpenSSL's ``X509_NAME_hash`` of a DER-encoded Name, as 8 hex digits."""
    canon = b"".join(_encode(_SET, b"".join(sorted(
        _encode(_SEQUENCE, oid + _canon_value(tag, value)) for oid, tag, value in rdn)))
        for rdn in _rdns(name_der))
    md = hashlib.sha1(canon, usedforsecurity=False).digest()
    return f"{int.from_bytes(md[:4], 'little'):08x}"


def _canon_value(tag: int, value: bytes) -> bytes:
    """OpenSSL's ``asn1_string_canon``: a string type becomes a UTF8String, trimmed, each
    run of white space one space, ASCII lower-cased; any other type is kept as it is."""
    encoding = _TEXT.get(tag)
    if encoding is None:
        return _encode(tag, value)
    text = value.decode(encoding).strip(_SPACE)
    out, space = [], False
    for ch in text:
        if ch in _SPACE:
            space = True
            continue
        if space:
            out.append(" ")
            space = False
        out.append(ch.lower() if ch < "\x80" else ch)
    return _encode(_UTF8STRING, "".join(out).encode())


def _rdns(der: bytes) -> list[list[tuple[bytes, int, bytes]]]:
    """A Name's RDNs, each a list of (the OID's whole encoding, value tag, value bytes)."""
    tag, body, rest = _read(der)
    if tag != _SEQUENCE or rest:
        raise ValueError("not a DER Name")
    rdns = []
    while body:
        tag, members, body = _read(body)
        if tag != _SET:
            raise ValueError("not a DER Name: RDN is not a SET")
        avas = []
        while members:
            tag, ava, members = _read(members)
            oid_tag, _, value = _read(ava)
            oid_whole = ava[:len(ava) - len(value)]
            value_tag, value_bytes, extra = _read(value)
            if tag != _SEQUENCE or oid_tag != 0x06 or extra:
                raise ValueError("not a DER Name: malformed attribute")
            avas.append((oid_whole, value_tag, value_bytes))
        rdns.append(avas)
    return rdns


def _read(data: bytes) -> tuple[int, bytes, bytes]:
    """One DER element: (tag, contents, what follows)."""
    if len(data) < 2:
        raise ValueError("truncated DER")
    tag, length, at = data[0], data[1], 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            raise ValueError("bad DER length")
        length, at = int.from_bytes(data[2:2 + n], "big"), 2 + n
    if len(data) < at + length:
        raise ValueError("truncated DER")
    return tag, data[at:at + length], data[at + length:]


def _encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content
