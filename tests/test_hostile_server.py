"""Hostile servers, through a real launcher: the agent is untouched, the error is clear, the
launcher stays up (with bounded memory, and SIGTERM still works mid-transfer), and once the
server behaves the update goes through.
"""

from __future__ import annotations

import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import trustme
from conftest import Launcher, wait_until
from hostile import (
    Relay,
    RssSampler,
    agent_pid,
    assert_untouched,
    files_in_bin,
    manifest_for,
    partials_in_bin,
    quick_args,
    sleeper,
    start,
    wait_committed,
)
from release_server import ReleaseServer, Route

MiB = 1 << 20


@dataclass
class Case:
    """What the server does wrong: routes for the manifest and the binary, the words expected
    in ``last_error``, and whether the manifest carries ``size``."""

    manifest: Callable[[bytes], Route] | None = None
    binary: Callable[[bytes], Route] | None = None
    error: str = ""
    size: bool = True
    args: tuple[str, ...] = ()


CASES = {
    "stalled transfer": Case(binary=lambda b: Route(body=b, behaviour="stall"),
                             error="stalled: no data for 2s"),
    "one byte a second": Case(binary=lambda b: Route(body=b, behaviour="trickle",
                                                     chunk_bytes=1, interval_s=1.0),
                              error="exceeded its deadline of 2s"),
    "truncated body": Case(binary=lambda b: Route(body=b[: len(b) // 2], behaviour="truncate",
                                                  declared_length=len(b)),
                           error="truncated download"),
    "Content-Length too short": Case(
        binary=lambda b: Route(body=b, behaviour="close",
                               headers={"Content-Length": str(len(b) // 2)}),
        error="sha256", size=False),
    "Content-Length too long": Case(
        binary=lambda b: Route(body=b, behaviour="close",
                               headers={"Content-Length": str(len(b) * 2)}),
        error="truncated download", size=False),
    "endless body": Case(binary=lambda b: Route(behaviour="endless"),
                         error="larger than", size=False,
                         args=("--max-binary-bytes", str(8 * MiB))),
    "400 MiB manifest": Case(manifest=lambda m: Route(
        behaviour="endless", headers={"Content-Length": str(400 * MiB)}),
        error="manifest larger than 65536 bytes"),
    "endless manifest": Case(manifest=lambda m: Route(behaviour="endless"),
                             error="manifest larger than 65536 bytes"),
    "garbage JSON": Case(manifest=lambda m: Route(body=os.urandom(512)),
                         error="manifest: manifest is not valid"),
    "JSON of the wrong shape": Case(manifest=lambda m: Route(body=b'[{"version": "9"}]'),
                                    error="not a JSON object"),
    "redirect loop": Case(manifest=lambda m: Route.redirect("/version.json"),
                          error="too many redirects"),
    "binary redirect loop": Case(binary=lambda b: Route.redirect("/bin/agent"),
                                 error="too many redirects"),
    "429 with Retry-After": Case(manifest=lambda m: Route(
        status=429, headers={"Retry-After": "1"}), error="HTTP 429"),
    "503 with Retry-After": Case(manifest=lambda m: Route(
        status=503, headers={"Retry-After": "1"}), error="HTTP 503"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_server_then_it_behaves(name: str, launcher: Callable[..., Launcher],
                                        tmp_path: Path) -> None:
    """The server misbehaves: agent untouched, clear error; then it behaves: update done."""
    case = CASES[name]
    new = sleeper(tmp_path, "0.2.0").read_bytes()
    with ReleaseServer() as srv:
        good_manifest = manifest_for("0.2.0", srv.url("/bin/agent"), new, size=case.size)
        srv.publish("/version.json", case.manifest(good_manifest) if case.manifest
                    else Route(body=good_manifest))
        srv.publish("/bin/agent", case.binary(new) if case.binary else Route(body=new))
        lch = launcher()
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                    **dict(zip(case.args[::2], case.args[1::2],
                                                      strict=True))), "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", case.error)
        assert "\n" not in st["last_error"]
        assert files_in_bin(lch) == ["agent"], "a failed download left a temp file"
        if "Retry-After" in name:
            wait_until(lambda: len(srv.requests) >= 2, 10, "a second request")
            gap = srv.requests[1].at - srv.requests[0].at
            assert gap >= 0.9, f"Retry-After: 1 not honoured (next request after {gap:.2f}s)"

        srv.publish("/version.json", Route(body=good_manifest))
        srv.publish("/bin/agent", Route(body=new))
        st = wait_committed(lch, "0.2.0")
        assert st["bad"] == [] and st["last_error"] is None
        assert lch.stop() == 0


def test_connection_resets_then_recovery(launcher: Callable[..., Launcher],
                                         tmp_path: Path) -> None:
    """Every connection reset by the peer: transport error, agent untouched, then the update."""
    new = sleeper(tmp_path, "0.2.0").read_bytes()
    with ReleaseServer() as srv, Relay(srv.port) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", base + "/bin/agent", new)))
        srv.publish("/bin/agent", Route(body=new))
        lch = launcher()
        pid = start(lch, quick_args(base + "/version.json", sleeper(tmp_path, "0.1.0")),
                    "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "transport")
        assert relay.resets >= 1 and str(relay.port) in st["last_error"]
        relay.mode = "pass"
        wait_committed(lch, "0.2.0")
        assert lch.stop() == 0


def test_untrusted_tls_certificate_then_a_trusted_one(launcher: Callable[..., Launcher],
                                                      tmp_path: Path) -> None:
    """https with a certificate from a CA the launcher does not trust is refused with a TLS
    error naming the verification failure; once the server presents a trusted one, it updates."""
    trusted, stranger = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    new = sleeper(tmp_path, "0.2.0").read_bytes()
    with ReleaseServer(ssl_context=context) as srv:
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/agent"),
                                                             new)))
        srv.publish("/bin/agent", Route(body=new))
        lch = launcher()
        args = [a for a in quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                      **{"--ca-file": str(ca_file)}) if a != "--allow-http"]
        pid = start(lch, args, "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "TLS certificate verification failed")
        assert st["last_error"].startswith("transport:")
        # The same listening context now presents a certificate from the trusted CA.
        trusted.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        wait_committed(lch, "0.2.0")
        assert lch.stop() == 0


def test_sigterm_mid_transfer_stops_promptly_and_cleanly(launcher: Callable[..., Launcher],
                                                         tmp_path: Path) -> None:
    """SIGTERM while a worker is trickling a download: exit 0 promptly, the worker, the agent
    and the temp file all gone."""
    new = sleeper(tmp_path, "0.2.0", pad=64 * 1024).read_bytes()
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/agent"),
                                                             new)))
        srv.publish("/bin/agent", Route(body=new, behaviour="trickle", chunk_bytes=16,
                                        interval_s=0.05))
        lch = launcher()
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                    **{"--download-deadline": "60"}), "0.1.0")
        bin_dir = lch.state_dir / "bin"
        wait_until(lambda: any(p.name.startswith(".agent.partial-")
                               and p.stat().st_size > 0 for p in bin_dir.iterdir()),
                   15, "a download in flight")
        assert lch.proc is not None
        family = psutil.Process(lch.proc.pid).children(recursive=True)
        t0 = time.monotonic()
        code = lch.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - t0
        assert code == 0
        assert took < 5, f"SIGTERM took {took:.1f}s mid-transfer"
        _gone, alive = psutil.wait_procs(family, timeout=3)
        assert not alive, f"left running: {alive}"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert files_in_bin(lch) == ["agent"]
        # What arrived stays, with its record, for the next start to resume.
        (kept, record) = partials_in_bin(lch)
        assert record == kept + ".json"
        assert lch.state()["current"]["version"] == "0.1.0"


@pytest.mark.parametrize("what", ["endless binary", "endless manifest", "400 MiB manifest"])
def test_memory_stays_bounded(what: str, launcher: Callable[..., Launcher],
                              tmp_path: Path) -> None:
    """While a worker swallows an endless body or a huge manifest, the resident's RSS stays
    flat and the worker's peak stays far below what it received."""
    received_cap = 96 * MiB
    new = sleeper(tmp_path, "0.2.0").read_bytes()
    with ReleaseServer() as srv:
        m = manifest_for("0.2.0", srv.url("/bin/agent"), new, size=False)
        if what == "endless binary":
            srv.publish("/version.json", Route(body=m))
            srv.publish("/bin/agent", Route(behaviour="endless"))
            error = "larger than"
        elif what == "endless manifest":
            srv.publish("/version.json", Route(behaviour="endless"))
            error = "manifest larger"
        else:
            srv.publish("/version.json", Route(behaviour="endless", headers={
                "Content-Length": str(400 * MiB)}))
            error = "manifest larger"
        lch = launcher()
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                    **{"--max-binary-bytes": str(received_cap),
                                       "--download-deadline": "20"}), "0.1.0")
        assert lch.proc is not None
        before = psutil.Process(lch.proc.pid).memory_info().rss
        with RssSampler(lch.proc.pid) as sampler:
            assert_untouched(lch, pid, "0.1.0", error, timeout=30)
            wait_until(lambda: lch.state().get("consecutive_failures", 0) >= 3, 30,
                       "three failed checks")
        assert sampler.workers_seen >= 1, "no worker was ever sampled"
        peak_resident = max(sampler.resident)
        assert peak_resident - before < 4 * MiB, (
            f"resident RSS grew {before / MiB:.1f} → {peak_resident / MiB:.1f} MiB")
        assert peak_resident < 64 * MiB, f"resident RSS {peak_resident / MiB:.1f} MiB"
        assert sampler.worker_peak < 90 * MiB, (
            f"worker peaked at {sampler.worker_peak / MiB:.1f} MiB")
        assert files_in_bin(lch) == ["agent"]
        assert agent_pid(lch, "0.1.0") == pid
        assert lch.stop() == 0
