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
from signing import Key, make_key
from test_revalidate import ETAG, publish, request

from launcher import worker
from launcher.sources import cadir, revalidate


@pytest.fixture
def tls(ca: trustme.CA) -> Iterator[ReleaseServer]:
    with ReleaseServer(tls_context(ca)) as server:
        yield server


PYTHON = "/usr/bin/python3"  # nobody's interpreter: the venv's may sit in root's home
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def worker_imports() -> str:
    """Code that imports the worker from this checkout and venv, as nobody runs it."""
    site = sysconfig.get_paths()["purelib"]  # this venv's packages: httpx, cryptography...
    return (f"import sys;sys.path[:0]=[{str(ROOT)!r},{site!r}];"
            "import certifi;from launcher.sources import revalidate;from launcher import worker")


def cannot_run_worker(python: str = PYTHON) -> str | None:
    """Why ``nobody`` cannot import the worker with ``python``, or None: the very imports
    :func:`as_nobody_worker` runs, so a parent directory closed to other users, an
    interpreter older than the launcher needs or a missing user are named in its words."""
    out = subprocess.run([*NOBODY, python, "-I", "-c", worker_imports()], capture_output=True,
                         text=True, timeout=60, check=False, cwd="/")
    if out.returncode == 0:
        return None
    said = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return (f"nobody cannot import the worker with {python} from {ROOT} and its venv: {said} "
            "(a parent directory closed to other users, as mktemp -d makes? an interpreter "
            "older than the launcher needs?)")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's temp dirs are root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not Path(PYTHON).exists():
        unavailable(f"root, setpriv and {PYTHON} are needed to act as another user")
    if reason := cannot_run_worker():
        unavailable(reason)
    path = Path("/var/tmp") / f"nma-cadir-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody_worker(req: dict[str, object], bundle: Path) -> dict[str, object]:
    """``launcher.worker``'s main as the service's user (``nobody``) would run it, with
    ``bundle`` standing for certifi's; its result line."""
    code = (worker_imports() + f";certifi.where=lambda:{str(bundle)!r};"
            f"revalidate.certifi_bundle=lambda:{str(bundle)!r};worker.main()")
    out = subprocess.run([*NOBODY, PYTHON, "-I", "-c", code], input=json.dumps(req),
                         text=True, capture_output=True, timeout=60, check=False, cwd="/")
    assert out.stdout.strip(), out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def service_state(shared: Path, ca: trustme.CA, tls: ReleaseServer) -> tuple[Key, Path, Path]:
    """A key, a bundle (certifi's plus the test CA) and a state dir as the service (uid
    ``nobody`` here) has them: the state dir and run/ its own, 0700."""
    key = make_key(shared / "keys", "release")  # the service's user reads the public key
    key.public.chmod(0o644)
    bundle = shared / "cacert.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    bundle.chmod(0o644)
    state = shared / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    for d in (state, state / "run"):
        shutil.chown(d, "nobody", "nogroup")
        d.chmod(0o700)
    publish(tls, key)
    return key, bundle, state


def test_a_check_run_as_root_does_not_break_the_services_checks(
        tls: ReleaseServer, ca: trustme.CA, shared: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator runs ``check`` as root on the service's state dir; its full check used
    to build run/ca as root (0700). The service's next conditional check must still answer,
    not crash on a directory it cannot enter."""
    key, bundle, state = service_state(shared, ca, tls)
    # The operator's check, as root: what `nginx-manager-launcher check` runs in-process.
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    monkeypatch.setattr(revalidate, "certifi_bundle", lambda: str(bundle))
    revalidate.tls_context.cache_clear()
    first = request(tls, key, state, None)
    first.pop("etag")
    assert worker.run_check(first).outcome == "none"
    revalidate.tls_context.cache_clear()

    result = as_nobody_worker(request(tls, key, state, None), bundle)  # the service's check
    assert result["outcome"] == "not_modified" and result["etag"] == ETAG, result["error"]


def test_a_directory_the_service_cannot_enter_is_not_used_and_breaks_nothing(
        tls: ReleaseServer, ca: trustme.CA, shared: Path) -> None:
    """run/ca/<sha> already built by root (an earlier launcher's root ``check``): the
    service's conditional check goes on through the bundle."""
    key, bundle, state = service_state(shared, ca, tls)
    shutil.chown(state / "run", "root", "root")
    assert cadir.build(str(state), str(bundle)) is not None  # as root, 0700
    shutil.chown(state / "run", "nobody", "nogroup")

    result = as_nobody_worker(request(tls, key, state, None), bundle)
    assert result["outcome"] == "not_modified" and result["etag"] == ETAG, result["error"]


def test_the_probe_runs_what_the_tests_run_and_says_what_stops_it(shared: Path) -> None:
    """The fixture's probe imports the worker as nobody with the interpreter the tests use:
    one that cannot (Ubuntu 22.04's python3 is 3.10, older than the launcher needs) is
    named with its own error, not mistaken for a closed directory nor left to fail later."""
    old = shared / "python3.10"
    old.write_text("#!/bin/sh\necho \"ImportError: cannot import name 'UTC' from "
                   "'datetime'\" >&2\nexit 1\n")
    old.chmod(0o755)
    reason = cannot_run_worker(str(old))
    assert reason is not None and str(old) in reason and "cannot import name 'UTC'" in reason
