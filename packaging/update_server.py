#!/usr/bin/env python3
"""A small update server for local work: serves a release directory over HTTP.

    python3 packaging/update_server.py [--dir DIR] [--port PORT] [--bind ADDR]

Defaults: ``./release``, port 8090, 127.0.0.1. Port 0 takes any free port; the first
line on stdout always names the real one: ``serving /abs/dir on http://127.0.0.1:PORT``.

Beyond the standard library's file server: a strong ``ETag`` per file (inode, size and
mtime, so an atomic replace changes it), ``If-None-Match`` answered with 304 (the
standard ``If-Modified-Since`` handling stays), ``Cache-Control: no-cache`` on the
manifest, one log line per request on stderr, and a clean exit 0 on SIGTERM or SIGINT.
Files are streamed from disk, never read whole. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("release")
DEFAULT_PORT = 8090
DEFAULT_BIND = "127.0.0.1"
NO_CACHE_NAMES = frozenset({"version.json", "version.json.minisig"})


def file_etag(st: os.stat_result) -> str:
    """A strong validator for one version of a file."""
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match asks for."""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == wanted for candidate in if_none_match.split(",")
    )


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} update-server INFO {message}", file=sys.stderr, flush=True)


class ReleaseRequestHandler(SimpleHTTPRequestHandler):
    """The standard file handler plus ETag, If-None-Match and no-cache on the manifest."""

    server_version = "nginx-manager-update-server"
    protocol_version = "HTTP/1.1"  # keep-alive for clients that poll; every answer is sized
    _etag: str | None = None
    _no_cache: bool = False

    def send_head(self) -> Any:
        self._etag = None
        path = self.translate_path(self.path)
        self._no_cache = os.path.basename(path) in NO_CACHE_NAMES
        try:
            st = os.stat(path)
        except OSError:
            return super().send_head()
        if not os.path.isdir(path):
            self._etag = file_etag(st)
            if_none_match = self.headers.get("If-None-Match")
            if if_none_match is not None and etag_matches(if_none_match, self._etag):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.end_headers()
                return None
        return super().send_head()

    def end_headers(self) -> None:
        if self._etag is not None:
            self.send_header("ETag", self._etag)
        if self._no_cache:
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self._etag = None
        super().send_error(code, message, explain)

    def log_error(self, format: str, *args: Any) -> None:
        if not format.startswith("code %d"):  # send_error's line: the request line says it
            self.log_message(format, *args)

    def log_message(self, format: str, *args: Any) -> None:
        _log(f"{self.client_address[0]} {format % args}")


def _wait_for_signal(rfd: int, received: list[int], stop: threading.Event) -> None:
    while not received:
        select.select([rfd], [], [], 0.5)  # the handler may append just after the byte
        with contextlib.suppress(BlockingIOError):
            os.read(rfd, 512)
    stop.set()


def serve(
    directory: Path,
    port: int = DEFAULT_PORT,
    bind: str = DEFAULT_BIND,
    *,
    stop: threading.Event | None = None,
) -> int:
    """Serve ``directory`` until ``stop`` is set (by default on SIGTERM or SIGINT)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if stop is None:
        stop = threading.Event()
        # The handler only records and the wakeup fd ends the wait below: setting the Event
        # from a handler could deadlock on the Event's own lock.
        received: list[int] = []
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: received.append(signum))
        threading.Thread(target=_wait_for_signal, args=(rfd, received, stop),
                         daemon=True).start()
    handler = functools.partial(ReleaseRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    host, real_port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    print(f"serving {directory} on http://{host}:{real_port}", flush=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    try:
        while not stop.wait(3600):
            pass
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    _log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="update-server.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, metavar="DIR")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="PORT")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDR")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"port {args.port} out of range")
    try:
        return serve(args.dir, args.port, args.bind)
    except OSError as exc:
        print(f"update-server: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
