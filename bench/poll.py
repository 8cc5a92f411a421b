"""A no-change poll (304): bytes on the wire, CPU in a resident client, cost of a worker start.

nginx serves a real manifest twice: on one port with keep-alive, on another with
``keepalive_timeout 0`` (the realistic case: after 5 idle minutes a server has closed the
connection anyway). Bytes are nginx's own ``$request_length`` + ``$bytes_sent`` for each
304, i.e. HTTP bytes; TCP/IP framing comes on top (see docs/PERFORMANCE.md). CPU is
``time.process_time()`` over many conditional fetches through the launcher's own
``HttpSource`` and ``make_client``. The worker row is what the launcher actually does per
check: spawn ``python -m launcher.worker``, hand it the request, wait for its result; wall
and CPU (``os.wait4`` rusage) per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from common import ROOT, VENV_PY, Figure, build, med, nginx, publish, scratch, summary

from launcher.settings import Settings
from launcher.sources.http import HttpSource, Validators, make_client

N_KEEPALIVE = 1000
N_CLOSE = 500
N_WORKER = 10


def cpu_per_poll(url: str, etag: str, n: int) -> float:
    client = make_client(allow_http=True)
    source = HttpSource(url, client=client)
    validators = Validators(etag=etag)
    for _ in range(20):
        assert source.fetch(validators).not_modified
    t0 = time.process_time()
    for _ in range(n):
        source.fetch(validators)
    cpu = (time.process_time() - t0) / n
    client.close()
    return cpu * 1e6


def worker_start(url: str, etag: str, state_dir: Path) -> tuple[float, float, float]:
    """(wall ms, CPU ms, peak RSS MiB) of one ``python -m launcher.worker`` check."""
    settings = Settings(manifest_url=url, allow_http=True, state_dir=state_dir,
                        platform="linux-amd64", allow_unsigned=True)
    # The journal's record of the manifest the ETag belongs to: a 304 is then re-checked
    # against its expiry (here none) instead of being refetched in full.
    trust = {"accepted": {"version": "0.1.0", "serial": None, "expires": None,
                         "key": "unsigned"}}
    request = {"settings": settings.for_worker(), "current": {"version": "0.1.0", "sha256": ""},
               "bad": [], "host_id": "bench", "etag": etag, "last_modified": None,
               "stage": True, "trust": trust}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(VENV_PY), "-m", "launcher.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert json.loads(out)["outcome"] == "not_modified", out
    return wall * 1000, (usage.ru_utime + usage.ru_stime) * 1000, usage.ru_maxrss / 1024


def run() -> list[Figure]:
    work = scratch("poll")
    release = work / "release"
    with nginx(work / "nginx", release, {"ka": "", "close": "keepalive_timeout 0;"}) as srv:
        publish("0.1.0", release, srv.url("ka", ""), build("0.1.0", work))
        urls = {k: srv.url(k, "version.json") for k in ("ka", "close")}
        client = make_client(allow_http=True)
        etag = HttpSource(urls["ka"], client=client).fetch(None).validators.etag
        client.close()
        assert etag
        srv.access_log.write_text("")
        for _ in range(5):
            for u in urls.values():
                with make_client(allow_http=True) as c:
                    assert HttpSource(u, client=c).fetch(Validators(etag=etag)).not_modified
        time.sleep(0.2)
        wire = [int(b) + int(c) for a, b, c in
                (line.split() for line in srv.access_log.read_text().splitlines())
                if a == "304"]
        ka = cpu_per_poll(urls["ka"], etag, N_KEEPALIVE)
        close = cpu_per_poll(urls["close"], etag, N_CLOSE)
        workers = [worker_start(urls["close"], etag, work / "state") for _ in range(N_WORKER)]
    wall = [w[0] for w in workers]
    cpu = [w[1] for w in workers]
    return [
        Figure("no-change poll (304): HTTP bytes on the wire", f"{med(wire):.0f} B",
               "request + response as nginx counts them", "< 1024 B", max(wire) < 1024,
               note="TCP/IP framing of a fresh connection adds ~10 segments x 52-66 B",
               data={"bytes": wire}),
        Figure("no-change poll: CPU in a resident httpx client",
               f"{close:.0f} us new connection, {ka:.0f} us keep-alive", "", "< 1 ms",
               max(close, ka) < 1000, data={"close_us": close, "keepalive_us": ka}),
        Figure("no-change poll as the launcher runs it: one worker start",
               f"CPU {summary(cpu, 'ms', '.0f')}, wall {med(wall):.0f} ms",
               f"a resident client: {close / 1000:.2f} ms", "report (the cost of the start)",
               note=f"worker peak RSS {med([w[2] for w in workers]):.1f} MiB; "
                    f"{med(cpu) * 288 / 1000:.1f} s CPU/day at one check per 5 min",
               data={"wall_ms": wall, "cpu_ms": cpu}),
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met,
              fig.note)
