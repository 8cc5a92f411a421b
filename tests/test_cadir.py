"""certifi's bundle as an OpenSSL hashed directory (``launcher.sources.cadir``): the names
are OpenSSL's own, a full check builds it, the no-change check loads it instead of the
bundle, and it is trusted only while the bundle is the one it was built from."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import certifi
import pytest
import trustme
from conftest import unavailable
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from release_server import ReleaseServer, tls_context
from signing import Key, make_key
from test_revalidate import ETAG, in_a_worker, publish, request

from launcher import worker
from launcher.sources import cadir, revalidate


def openssl_hash(pem: str) -> str:
    tool = shutil.which("openssl")
    if tool is None:
        unavailable("openssl is not installed (apt-get install -y openssl)")
    assert tool is not None
    return subprocess.run([tool, "x509", "-noout", "-subject_hash"], input=pem, text=True,
                          capture_output=True, check=True).stdout.strip()


def odd_names() -> list[str]:
    """Self-signed certificates whose subjects test the canonical form: case, runs of white
    space, leading and trailing space, a multi-valued RDN, BMP and T61 strings, non-ASCII."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "  Mixed   CASE\tName  ")]),
        x509.Name([x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "B Org"),
            x509.NameAttribute(NameOID.COMMON_NAME, "A Name")])]),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bmp Ünïcode",
                                      _type=_ASN1Type.BMPString)]),
        x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grüße GmbH"),
                   x509.NameAttribute(NameOID.COMMON_NAME, "T61 Name",
                                      _type=_ASN1Type.T61String)]),
    ]
    made = []
    for name in names:
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(datetime(2026, 1, 1))
                .not_valid_after(datetime(2036, 1, 1))
                .sign(key, hashes.SHA256()))
        made.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return made


def test_names_are_openssls_for_every_certificate_in_the_bundle_and_odd_ones() -> None:
    pems = cadir.certificates(Path(certifi.where()).read_text()) + odd_names()
    assert len(pems) > 100
    for pem in pems:
        ours = cadir.subject_hash(cadir.subject_of(ssl.PEM_cert_to_DER_cert(pem)))
        assert ours == openssl_hash(pem), pem


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture
def public(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test CA as a public one: put into a copy of certifi's bundle that both the full
    check (httpx, through certifi.where) and the no-change check use."""
    bundle = tmp_path / "cacert.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    monkeypatch.setattr(revalidate, "certifi_bundle", lambda: str(bundle))
    revalidate.tls_context.cache_clear()
    yield bundle
    revalidate.tls_context.cache_clear()


@pytest.fixture
def tls(ca: trustme.CA) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


def test_a_full_check_builds_it_and_the_304_check_loads_it_instead_of_the_bundle(
        tls: ReleaseServer, key: Key, ca: trustme.CA, public: Path, tmp_path: Path) -> None:
    publish(tls, key)
    first = request(tls, key, tmp_path, None)
    first.pop("etag")  # no validators yet: the full check, through httpx
    result = worker.run_check(first)
    assert result.outcome == "none" and result.etag == ETAG, result
    built = tmp_path / "run" / "ca" / cadir.key(public.read_bytes())
    assert (built / "complete").read_text() == f"{len(list(built.glob('*.*')))}\n"
    ours = cadir.subject_hash(cadir.subject_of(ssl.PEM_cert_to_DER_cert(
        ca.cert_pem.bytes().decode())))
    assert (built / f"{ours}.0").read_text().strip() == ca.cert_pem.bytes().decode().strip()

    answer, httpx_loaded = in_a_worker(request(tls, key, tmp_path, None), public)
    assert answer["outcome"] == "not_modified" and not httpx_loaded, answer
    # Proof that the directory, not the bundle, verified it: without the test CA's file the
    # no-change check cannot verify the server and the full check (httpx) answers instead.
    (built / f"{ours}.0").unlink()
    answer, httpx_loaded = in_a_worker(request(tls, key, tmp_path, None), public)
    assert answer["outcome"] == "not_modified" and httpx_loaded, answer


def test_it_is_used_only_while_the_bundle_is_the_one_it_was_built_from(
        tls: ReleaseServer, key: Key, public: Path, tmp_path: Path) -> None:
    publish(tls, key)
    first = request(tls, key, tmp_path, None)
    first.pop("etag")
    worker.run_check(first)
    old = cadir.find(str(tmp_path), str(public))
    assert old is not None
    public.write_bytes(public.read_bytes() + b"\n")  # certifi upgraded
    assert cadir.find(str(tmp_path), str(public)) is None
    answer, httpx_loaded = in_a_worker(request(tls, key, tmp_path, None), public)
    assert answer["outcome"] == "not_modified" and not httpx_loaded  # from the bundle itself
    first = request(tls, key, tmp_path, None)
    first.pop("etag")
    worker.run_check(first)  # the next full check builds the new one, removes the old
    assert cadir.find(str(tmp_path), str(public)) is not None
    assert not Path(old).exists()
    assert [p.name for p in (tmp_path / "run" / "ca").iterdir()] == [
        cadir.key(public.read_bytes())]


def test_a_bundle_it_cannot_read_builds_nothing_and_the_check_goes_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    assert cadir.build(str(tmp_path), str(bad)) is None
    assert cadir.build(str(tmp_path), str(tmp_path / "missing.pem")) is None
    left = tmp_path / "run" / "ca"
    assert not left.exists() or list(left.iterdir()) == []  # no temp dir left behind
