"""An interrupted 256 MiB download, resumed vs restarted, through a real loopback server.

The server (``tests/range_server.py``, a real HTTP server on 127.0.0.1 that answers Range
requests with ETag / If-Range) cuts the connection once, half-way. Resumed: the launcher's
``download()`` as the worker runs it, which continues with ``Range: bytes=N-``. Restarted:
the same function with ``resume=False`` (what it did before): the cut fails the call and the
next call starts over. Each side gets the same cut; the figures are the bytes the server
sent and the wall time until the verified file is there, median of the runs.

    .venv/bin/python bench/resume.py
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from common import ROOT, Figure, med, scratch

sys.path.insert(0, str(ROOT / "tests"))
from range_server import RangeServer

from launcher.download import download
from launcher.errors import DownloadError
from launcher.sources.http import make_client

SIZE = 256 << 20
CUT = SIZE // 2
RUNS = 3


def one(server: RangeServer, dest: Path, sha: str, *, resume: bool) -> tuple[int, float]:
    server.forget_requests()
    server.cuts = [CUT]
    client = make_client(allow_http=True)
    started = time.perf_counter()
    try:
        try:
            path = download(client, server.url(), dest, expected_sha256=sha,
                            expected_size=SIZE, resume=resume)
        except DownloadError:
            assert not resume
            path = download(client, server.url(), dest, expected_sha256=sha,
                            expected_size=SIZE, resume=resume)
        took = time.perf_counter() - started
        path.unlink()
    finally:
        client.close()
    return sum(r.sent for r in server.requests), took


def run() -> list[Figure]:
    work = scratch("resume")
    blob = work / "blob"
    with blob.open("wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    dest = work / "bin"
    dest.mkdir()
    results: dict[bool, list[tuple[int, float]]] = {True: [], False: []}
    with RangeServer(blob) as server:
        for _ in range(RUNS):
            for resume in (True, False):
                results[resume].append(one(server, dest, sha, resume=resume))
    blob.unlink()
    sent = {k: med([float(b) for b, _ in v]) for k, v in results.items()}
    took = {k: med([t for _, t in v]) for k, v in results.items()}
    return [Figure(
        "interrupted 256 MiB download (cut at 128 MiB): resumed vs restarted",
        f"resumed: {sent[True] / (1 << 20):.0f} MiB sent, {took[True]:.2f} s",
        f"restarted: {sent[False] / (1 << 20):.0f} MiB sent, {took[False]:.2f} s",
        "bytes and time for both", None,
        note=f"median of {RUNS}; loopback, no rate limit")]


if __name__ == "__main__":
    for fig in run():
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.note)
