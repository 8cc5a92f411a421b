"""A real loopback file server that answers Range requests and cuts connections on cue.

    with RangeServer(path_or_bytes) as server:
        server.cuts = [1 << 20]          # the first response stops after 1 MiB sent
        url = server.url("/bin/agent")

It sends ETag and Last-Modified, answers ``Range: bytes=N-`` with 206 and ``Content-Range``
(honouring ``If-Range``: a validator that does not match gets the whole file, 200). Knobs:
``cuts`` (absolute byte offsets; each response that reaches the next one closes the
connection there), ``ignore_range`` (always 200), ``bad_range`` (206 that starts at byte 0
whatever was asked), ``rate_bps`` (a slow link), ``etag`` (change it to simulate a new file
behind the same URL). Every request's Range / If-Range is kept in ``requests``. With an
``ssl_context`` it serves https. Used by the tests and by ``bench/resume.py``.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-$")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    if_range: str | None
    status: int
    sent: int  # body bytes sent
    arrived: float = 0.0  # time.monotonic() when the request came in


class RangeServer:
    def __init__(self, content: bytes | Path, etag: str = '"v1"',
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.content = content
        self.ssl_context = ssl_context
        self.etag = etag
        self.last_modified = "Tue, 01 Dec 2026 10:00:00 GMT"
        self.cuts: list[int] = []
        self.ignore_range = False
        self.bad_range = False
        self.rate_bps: float | None = None
        self._requests: list[Request] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.stat().st_size

    def read(self, start: int, length: int) -> bytes:
        if isinstance(self.content, bytes):
            return self.content[start : start + length]
        with self.content.open("rb") as f:
            f.seek(start)
            return f.read(length)

    def next_cut(self, start: int) -> int | None:
        with self._lock:
            for cut in self.cuts:
                if cut > start:
                    self.cuts.remove(cut)
                    return cut
        return None

    @property
    def requests(self) -> list[Request]:
        """What was asked, in the order it arrived (each is recorded once answered, and a
        slow handler may finish after a later one)."""
        with self._lock:
            return sorted(self._requests, key=lambda r: r.arrived)

    def forget_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def url(self, path: str = "/bin/agent") -> str:
        assert self._httpd is not None
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> RangeServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        if self.ssl_context is not None:  # handshakes in the handler threads, as release_server
            httpd.socket = self.ssl_context.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False)
        httpd.owner = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stopping.set()
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        arrived = time.monotonic()
        owner: RangeServer = self.server.owner  # type: ignore[attr-defined]
        size = owner.size
        asked = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        start = 0
        match = _RANGE.match(asked or "")
        if match and not owner.ignore_range and if_range in (None, owner.etag,
                                                               owner.last_modified):
            start = int(match[1])
        if start >= size > 0 and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            owner.record(Request(self.path, asked, if_range, 416, 0, arrived))
            return
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("ETag", owner.etag)
        self.send_header("Last-Modified", owner.last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            shown = 0 if owner.bad_range else start
            self.send_header("Content-Range", f"bytes {shown}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        cut = owner.next_cut(start)
        end = min(size, cut) if cut is not None else size
        sent = 0
        began = time.monotonic()
        try:
            position = start
            while position < end and not owner.stopping.is_set():
                block = owner.read(position, min(_CHUNK, end - position))
                self.wfile.write(block)
                position += len(block)
                sent += len(block)
                if owner.rate_bps:
                    ahead = sent / owner.rate_bps - (time.monotonic() - began)
                    if ahead > 0 and owner.stopping.wait(ahead):
                        break
        except OSError:
            pass
        owner.record(Request(self.path, asked, if_range, status, sent, arrived))
        if cut is not None:
            self.close_connection = True
