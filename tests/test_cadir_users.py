"""The hashed CA directory (``launcher.sources.cadir``) when two users touch one state dir:
an operator's ``check`` run as root on the service's state dir, then the service's own
checks, as its user. The directory is a cache: whoever built it, the service's checks must
go on (at worst through the bundle itself)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import trustme
from conftest import ROOT, unavailable
from release_server import ReleaseServer, tls_context
from signing import make_key
from test_revalidate import ETAG, publish, request

from launcher import worker
from launcher.sources import cadir, revalidate


@pytest.fixture
def tls(ca: trustme.CA) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's temp dirs are root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None \
            or shutil.which("python3", path="/usr/bin") is None:
        unavailable("root, setpriv and /usr/bin/python3 are needed to act as another user")
    path = Path("/var/tmp") / f"nma-cadir-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody_worker(req: dict[str, object], bundle: Path) -> dict[str, object]:
    """``launcher.worker``'s main as the service's user (``nobody``) would run it, with
    ``bundle`` standing for certifi's; its result line."""
    site = sysconfig.get_paths()["purelib"]  # this venv's packages: httpx, cryptography...
    code = (f"import sys;sys.path[:0]=[{str(ROOT)!r},{site!r}];"
            "import certifi;from launcher.sources import revalidate;"
            f"certifi.where=lambda:{str(bundle)!r};"
            f"revalidate.certifi_bundle=lambda:{str(bundle)!r};"
            "from launcher import worker;worker.main()")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          "/usr/bin/python3", "-I", "-c", code], input=json.dumps(req),
                         text=True, capture_output=True, timeout=60, check=False, cwd="/")
    assert out.stdout.strip(), out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_check_run_as_root_does_not_break_the_services_checks(
        tls: ReleaseServer, ca: trustme.CA, shared: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The service (uid ``nobody`` here) owns its state dir and run/ (0700). An operator
    runs ``check`` as root on it: the full check builds run/ca as root (0700). The
    service's next conditional check must still answer (from the bundle, if it cannot read
    the directory), not crash on the directory it cannot enter."""
    key = make_key(shared / "keys", "release")  # the service's user reads the public key
    key.public.chmod(0o644)
    bundle = shared / "cacert.pem"  # certifi's bundle plus the test CA, readable by all
    bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    bundle.chmod(0o644)
    state = shared / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    for d in (state, state / "run"):
        shutil.chown(d, "nobody", "nogroup")
        d.chmod(0o700)
    publish(tls, key)

    # The operator's check, as root: what `nginx-manager-launcher check` runs in-process.
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    monkeypatch.setattr(revalidate, "certifi_bundle", lambda: str(bundle))
    revalidate.tls_context.cache_clear()
    first = request(tls, key, state, None)
    first.pop("etag")
    assert worker.run_check(first).outcome == "none"
    revalidate.tls_context.cache_clear()
    built = state / "run" / "ca" / cadir.key(bundle.read_bytes())
    assert (built / "complete").is_file()  # root built it: the cache exists, root's alone

    # The service's own conditional check, as its user.
    result = as_nobody_worker(request(tls, key, state, None), bundle)
    assert result["outcome"] == "not_modified" and result["etag"] == ETAG, result["error"]
