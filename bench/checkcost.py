"""CPU of a no-change update check as the launcher runs it: today's worker against this tree's.

Both workers run the way the resident starts them (``launcher.isolated.argv``: ``python -I
-c BOOT``, request on stdin, result line on stdout), from a venv shaped like the Debian
package's and the image's (the bench interpreter, the same site-packages, no ``.pth`` file,
bytecode compiled), against a loopback server in this process. "today" is ``launcher/`` as
of ``REF`` (``git archive``), "new" is this checkout's; both trees are byte-compiled the same
way. Every case and both trees run in one shuffled order (the first run of each is a
warm-up), so the machine's load falls on all alike. CPU is the worker's user+sys from
``os.wait4`` rusage.

Cases: a signed release with a trusted key, checked over https with ``--ca-file`` (a trustme
CA), over https from a "public" CA (the same CA put into the venv's copy of certifi's bundle,
no ``--ca-file``) and over plain http (``--allow-http``, the case of ``bench/poll.py``); the
server answers 304 to the validators (``304``) or ignores them and sends the same manifest
again (``200``, nothing to do).

The parts: separate processes in the same venv, each doing one step more than the last,
CPU from rusage, so each difference is what that step costs.

    .venv/bin/python bench/checkcost.py [--n 20] [--ref 38a7a8d]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import ROOT, Figure, build, med, scratch, summary

REF = "38a7a8d"  # the last commit before the cheaper check


# ---- the venv and the two trees ------------------------------------------------------------

def package_venv(work: Path) -> Path:
    """A venv like the package's: this interpreter, the same site-packages, no .pth files
    (the dev venv's editable-install finder costs every start)."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    target = next((venv / "lib").glob("python3*/site-packages"))
    for entry in site.iterdir():
        if entry.suffix == ".pth" or entry.name.startswith(("__editable__", "_distutils_hack",
                                                            "__pycache__")):
            continue
        (target / entry.name).symlink_to(entry.resolve())
    return venv / "bin" / "python"


def public_ca(py: Path, pem: bytes) -> None:
    """Put the test CA into the venv's certifi bundle (a copy): a server with a certificate
    from a public CA, as most hosts have, checked without --ca-file."""
    site = next((py.parent.parent / "lib").glob("python3*/site-packages"))
    real = (site / "certifi").resolve()
    (site / "certifi").unlink()
    shutil.copytree(real, site / "certifi")
    with (site / "certifi" / "cacert.pem").open("ab") as fp:
        fp.write(b"\n" + pem)


def trees(work: Path, ref: str, py: Path) -> dict[str, Path]:
    today, new = work / "today", work / "new"
    today.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "launcher"],
                             check=True, capture_output=True).stdout
    archive_path = work / "today.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(today, filter="data")
    shutil.copytree(ROOT / "launcher", new / "launcher",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for tree in (today, new):
        subprocess.run([str(py), "-m", "compileall", "-q", str(tree)], check=True)
    return {"today": today, "new": new}


def worker_argv(py: Path, tree: Path) -> tuple[list[str], dict[str, str]]:
    """The worker's argv and environment exactly as that tree's resident builds them."""
    code = ("import json,os,sys; from launcher import isolated; "
            "print(json.dumps([isolated.argv('launcher.worker', parent=int(sys.argv[1])), "
            "isolated.worker_environ(os.environ)]))")
    out = subprocess.run([str(py), "-I", "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
                          + code, str(os.getpid())], check=True, capture_output=True,
                         text=True).stdout
    argv, env = json.loads(out)
    return argv, env


# ---- the server ----------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        files = self.server.files
        path = self.path.split("?")[0]
        if path not in files:
            self._send(404, b"")
            return
        etag = f'"{self.server.etag}"'
        if (path.endswith(".json") and self.server.honour_validators
                and self.headers.get("If-None-Match") == etag):
            self._send(304, None, etag)
            return
        self._send(200, files[path], etag)

    def _send(self, status: int, body: bytes | None, etag: str | None = None) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.etag = "v1"
        self.honour_validators = True
        self.scheme = "http"
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}{path}"


@contextlib.contextmanager
def serving(files: dict[str, bytes], context: ssl.SSLContext | None) -> Iterator[Server]:
    srv = Server(files, context)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


# ---- one check -----------------------------------------------------------------------------

def run_worker(argv: list[str], env: dict[str, str], request: dict[str, Any],
               log: Path) -> tuple[float, dict[str, Any]]:
    """(CPU ms, result) of one worker run; its log goes to ``log``."""
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"no result line: {out!r} {log.read_text()[-2000:]}") from None
    return (usage.ru_utime + usage.ru_stime) * 1000, result


def request_for(url: str, state: Path, keys: list[str], ca: str | None,
                trust: dict[str, Any] | None, etag: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from launcher.settings import Settings

    settings = Settings(manifest_url=url, allow_http=url.startswith("http:"), state_dir=state,
                        platform="linux-amd64", public_keys=tuple(map(Path, keys)),
                        ca_file=Path(ca) if ca else None)
    return {"settings": settings.for_worker(), "current": {"version": "0.1.0", "sha256": ""},
            "bad": [], "host_id": "bench", "etag": etag, "last_modified": None,
            "stage": True, "trust": trust}


# ---- the parts -----------------------------------------------------------------------------

def parts(py: Path, trees: dict[str, Path], ca_file: str) -> dict[str, list[tuple[str, str]]]:
    """Per tree, (step, python -I -c code) in the order of a 304 check, each one step more;
    then single items measured on their own (each over the boot)."""
    def boot(tree: Path) -> str:
        return ("import ctypes,os,runpy,signal,sys;os.chdir('/');"
                "ctypes.CDLL(None).prctl(1,signal.SIGKILL,0,0,0);"
                "ctypes.CDLL(None).prctl(4,0,0,0,0);"
                f"sys.path.insert(0,{str(tree)!r});")
    ctx = ("import ssl,certifi;c=ssl.create_default_context(cafile=certifi.where());"
           f"c.load_verify_locations({ca_file!r});")
    today, new = boot(trees["today"]), boot(trees["new"])
    bundle = subprocess.run([str(py), "-I", "-c", "import certifi;print(certifi.where())"],
                            check=True, capture_output=True, text=True).stdout.strip()
    return {
        "today": [
            ("interpreter start (python -I -c pass)", "pass"),
            ("boot (ctypes, prctl, runpy)", today),
            ("import ssl", today + "import ssl"),
            ("import httpx", today + "import ssl,httpx"),
            ("launcher.worker's other imports", today + "import launcher.worker"),
            ("SSL context: certifi + --ca-file", today + "import launcher.worker;" + ctx),
            ("rest of make_client (httpx.Client, User-Agent)", today +
             f"from launcher.sources.http import make_client;make_client(ca_file={ca_file!r})"),
        ],
        "new": [
            ("interpreter start (python -I -c pass)", "pass"),
            ("boot (ctypes, prctl, runpy)", new),
            ("import launcher.worker", new + "import launcher.worker"),
            ("SSL context: --ca-file alone (tried first)", new + "import launcher.worker;"
             "from launcher.sources import revalidate as r;"
             f"r.tls_context({ca_file!r},with_certifi=False)"),
            ("or instead, certifi's bundle + --ca-file (a public CA's server)", new +
             "import launcher.worker;from launcher.sources import revalidate as r;"
             f"r.tls_context({ca_file!r})"),
        ],
        "items (each over the boot)": [
            ("python -I -c pass", "pass"),
            ("python -I -S -c pass (no site)", "pass"),  # run with -S, see run()
            ("boot", today),
            ("import psutil", today + "import psutil"),
            ("importlib.metadata version()", today + "from importlib import metadata;"
             "metadata.version('nginx-manager-agent')"),
            ("import http.client", today + "import http.client"),
            ("import certifi; certifi.where()", today + "import certifi;certifi.where()"),
            ("import ssl", today + "import ssl"),
            ("ssl context from certifi's bundle, path known", today + "import ssl;"
             f"ssl.create_default_context(cafile={bundle!r})"),
        ],
    }


def cpu_of(py: Path, code: str, *flags: str) -> float:
    proc = subprocess.Popen([str(py), "-I", *flags, "-c", code])
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, code
    return (usage.ru_utime + usage.ru_stime) * 1000


def parts_figures(py: Path, code: dict[str, Path], ca_file: str, n: int) -> list[Figure]:
    figures: list[Figure] = []
    for k, steps in parts(py, code, ca_file).items():
        samples: dict[str, list[float]] = {name: [] for name, _ in steps}
        for _ in range(n):
            for name, c in random.sample(steps, len(steps)):
                flags = ("-S",) if "-S" in name else ()
                samples[name].append(cpu_of(py, c, *flags))
        lines, prev, before = [], 0.0, 0.0
        for name, _ in steps:
            m = med(samples[name])
            if k.startswith("items"):
                base = {"python -I -c pass": None, "boot": None,
                        "python -I -S -c pass (no site)": "python -I -c pass",
                        "ssl context from certifi's bundle, path known": "import ssl",
                        }.get(name, "boot")
                lines.append(f"{name}: {m:.0f} ms"
                             + (f" ({m - med(samples[base]):+.0f})" if base else ""))
            elif name.startswith("or instead"):  # another step after the same predecessor
                lines.append(f"{name}: {m:.0f} ms ({m - before:+.0f})")
            else:
                lines.append(f"{name}: {m:.0f} ms ({m - prev:+.0f})")
                before, prev = prev, m
        figures.append(Figure(f"the parts, {k} (cumulative CPU, median of {n})",
                              "; ".join(lines), data={"parts": samples}))
        show(figures[-1])
    return figures


# ---- the run -------------------------------------------------------------------------------

def run(n: int = 20, ref: str = REF) -> list[Figure]:
    sys.path.insert(0, str(ROOT / "packaging"))
    import minisign_tool
    import trustme

    work = scratch("checkcost")
    py = package_venv(work)
    code = trees(work, ref, py)
    ca = trustme.CA()
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    public_ca(py, ca.cert_pem.bytes())
    secret, public = work / "release.key", work / "release.pub"
    minisign_tool.keygen(secret, public)
    binary = build("0.1.0", work)
    argvs = {k: worker_argv(py, tree) for k, tree in code.items()}
    log = work / "worker.log"
    (work / "state").mkdir(mode=0o700, exist_ok=True)  # a resident's state dir exists
    cases = {(scheme, answer): (ctx, ca_) for scheme, ctx, ca_ in (
        ("https, --ca-file", server_ctx, str(ca_file)),
        ("https, a public CA (in certifi's bundle)", server_ctx, None),
        ("http (--allow-http)", None, None)) for answer in ("304", "200")}
    figures: list[Figure] = []
    cpu: dict[tuple[str, str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        requests = {}
        for i, (case, (ctx, ca_)) in enumerate(cases.items()):
            srv = stack.enter_context(serving({}, ctx))
            requests[case] = first_check(srv, work / f"release-{i}", binary, secret, public,
                                         ca_, list(argvs.values()), work / "state", log)
            srv.honour_validators = case[1] == "304"
        # Every case and both trees in one shuffled order: the machine's load, which moves
        # over minutes, falls on all of them alike.
        order = [(case, k) for case in cases for k in argvs for _ in range(n + 1)]
        random.shuffle(order)
        warm: set[tuple[tuple[str, str], str]] = set()
        for case, k in order:
            ms, result = run_worker(*argvs[k], requests[case], log)
            want = ("not_modified",) if case[1] == "304" else ("none",)
            assert result["outcome"] in want, (case, k, result)
            if (case, k) in warm:
                cpu.setdefault((*case, k), []).append(ms)
            warm.add((case, k))  # the first run of each is a warm-up
    for scheme, answer in cases:
        today, new = (cpu[scheme, answer, k] for k in ("today", "new"))
        figures.append(Figure(
            f"no-change check as the launcher runs it, {scheme}, server answers {answer}",
            f"new {summary(new, 'ms', '.0f')}", f"today {summary(today, 'ms', '.0f')}",
            "at most half of today's", med(new) <= med(today) / 2,
            note=f"ratio {med(new) / med(today):.2f}; {med(new) * 288 / 1000:.0f} s CPU/day "
                 f"(today {med(today) * 288 / 1000:.0f}) at one check per 5 min",
            data={"today_ms": today, "new_ms": new}))
        show(figures[-1])
    figures += parts_figures(py, code, str(ca_file), n)
    return figures


def first_check(srv: Server, release: Path, binary: Path, secret: Path, public: Path,
                ca: str | None, argvs: list[tuple[list[str], dict[str, str]]], state: Path,
                log: Path) -> dict[str, Any]:
    """Publish a signed 0.1.0 on ``srv`` and check it once in full with each tree, as a
    resident does first (which is also when this tree writes certifi's bundle as a hashed
    directory); the request of every later check (the trust record and the ETag)."""
    import release_tool

    release_tool.publish("0.1.0", release, srv.url(""), binary=binary, sign_key=secret)
    srv.files.update({
        "/version.json": (release / "version.json").read_bytes(),
        "/version.json.minisig": (release / "version.json.minisig").read_bytes()})
    url = srv.url("/version.json")
    for argv in argvs:
        _, first = run_worker(*argv, request_for(url, state, [str(public)], ca, None, None),
                              log)
        assert first["outcome"] == "none", first
    trust = {"accepted": first["accepted"],
             "serials": {first["accepted"]["key"]: first["accepted"]["serial"]}}
    return request_for(url, state, [str(public)], ca, trust, first["etag"])


def show(fig: Figure) -> None:
    print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met, "|",
          fig.note, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20, help="runs of each worker per case")
    p.add_argument("--ref", default=REF, help="the commit whose launcher/ is today's")
    a = p.parse_args()
    run(a.n, a.ref)


if __name__ == "__main__":
    main()
