"""Download + verify of a 256 MiB build from nginx on loopback: the launcher vs curl.

Reference: ``curl -s URL | tee FILE | sha256sum`` (wall time of the pipeline). Launcher:
``launcher.download.download()`` with the client from ``launcher.sources.http.make_client``,
exactly what the worker runs (stream, hash while writing, size cap, fsync, chmod), timed
inside a fresh process after its imports; its peak RSS growth is VmHWM after - VmHWM before
the call. Runs alternate; the file is page-cached by a first unmeasured read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from common import VENV_PY, Figure, med, nginx, scratch, summary

SIZE = 256 << 20
RUNS = 3

CHILD = r"""
import json, re, sys, time
from pathlib import Path
from launcher import download
from launcher.sources.http import make_client

def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

url, dest, sha, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = make_client(allow_http=True)
before = hwm()
t0 = time.perf_counter()
path = download.download(client, url, dest, expected_sha256=sha, expected_size=size)
wall = time.perf_counter() - t0
after = hwm()
path.unlink()
print(json.dumps({"wall_s": wall, "hwm_before_kib": before, "hwm_after_kib": after}))
"""


def payload(www: Path) -> tuple[Path, str]:
    www.mkdir(parents=True, exist_ok=True)
    path = www / "agent.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(SIZE >> 20):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return path, digest.hexdigest()


def run(runs: int = RUNS) -> list[Figure]:
    work = scratch("download")
    _, sha = payload(work / "www")
    out = work / "out"
    out.mkdir()
    curl_s: list[float] = []
    ours_s: list[float] = []
    ours_proc_s: list[float] = []
    growth: list[float] = []
    with nginx(work / "nginx", work / "www", {"www": "access_log off;"}) as srv:
        url = srv.url("www", "agent.bin")
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
        for _ in range(runs):
            t0 = time.perf_counter()
            res = subprocess.run(["bash", "-c", f"curl -s {url} | tee {out}/curl.bin | sha256sum"],
                                 check=True, capture_output=True, text=True)
            curl_s.append(time.perf_counter() - t0)
            assert res.stdout.split()[0] == sha, "curl pipeline hash mismatch"
            (out / "curl.bin").unlink()
            t0 = time.perf_counter()
            res = subprocess.run([str(VENV_PY), "-c", CHILD, url, str(out), sha, str(SIZE)],
                                 check=True, capture_output=True, text=True)
            ours_proc_s.append(time.perf_counter() - t0)
            r = json.loads(res.stdout)
            ours_s.append(r["wall_s"])
            growth.append((r["hwm_after_kib"] - r["hwm_before_kib"]) / 1024)
    mb = SIZE / 1e6
    curl_rate = [mb / t for t in curl_s]
    ours_rate = [mb / t for t in ours_s]
    ratio = med(curl_s) / med(ours_s)
    return [
        Figure("download + verify 256 MiB (launcher.download, incl. fsync)",
               summary(ours_rate, "MB/s", ".0f"),
               f"curl | tee | sha256sum {summary(curl_rate, 'MB/s', '.0f')}",
               ">= 1.0x", ratio >= 1.0,
               note=f"ratio {ratio:.2f}x; whole worker-like process incl. start+imports "
                    f"{med([mb / t for t in ours_proc_s]):.0f} MB/s "
                    f"({med(curl_s) / med(ours_proc_s):.2f}x)",
               data={"ours_s": ours_s, "curl_s": curl_s, "proc_s": ours_proc_s}),
        Figure("peak RSS growth during the download", summary(growth, "MiB", ".2f"),
               "", "< 16 MiB", max(growth) < 16, data={"mib": growth}),
    ]


if __name__ == "__main__":
    for fig in run(2):
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met,
              fig.note)
