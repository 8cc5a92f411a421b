"""A real update server on loopback whose misbehaviour each test publishes.

    with ReleaseServer() as server:
        server.publish("/version.json", Route(body=b"{...}", etag='"v1"'))
        server.publish("/bin/agent", Route(body=data, behaviour="trickle", interval_s=0.05))
        url = server.url("/version.json")

Behaviours: ``normal`` (Content-Length), ``close`` (no Content-Length, the body ends when the
connection closes), ``truncate`` (announces ``declared_length`` and closes early), ``trickle``
(``chunk_bytes`` every ``interval_s``), ``endless`` (bytes until the client goes away),
``stall`` (headers, then nothing), ``trickle-headers`` (a status line, then one header byte
every ``interval_s``, for ever). ``Route.redirect`` answers with a Location. ETag and
Last-Modified are sent and answered with 304 when the request's validators match.
Every request is recorded in ``server.requests``.

``ReleaseServer(ssl_context=ctx)`` serves https instead (see :func:`tls_context` for a
server context from a ``trustme`` CA); ``host`` is the name :meth:`ReleaseServer.url` uses.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import trustme

Behaviour = Literal["normal", "close", "truncate", "trickle", "endless", "stall",
                    "trickle-headers"]


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    behaviour: Behaviour = "normal"
    declared_length: int | None = None
    chunk_bytes: int = 1
    interval_s: float = 0.05

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Route:
        return cls(status=status, headers={"Location": location})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.time)  # wall clock, as rate-limit resets are


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from ``ca`` for ``localhost`` and ``127.0.0.1``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


class ReleaseServer:
    """Threaded HTTP server on 127.0.0.1:<ephemeral>; a context manager that stops cleanly."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def publish(self, path: str, route: Route) -> None:
        self.routes[path] = route

    def url(self, path: str) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def __enter__(self) -> ReleaseServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        if self.ssl_context is not None:
            # The handshake happens in the handler's thread, so a client that never
            # completes it cannot block the accept loop.
            httpd.socket = self.ssl_context.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False)
        httpd.release = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            try:
                self.connection.do_handshake()
            except OSError:  # an untrusting client aborts the handshake: tests do that
                self.close_connection = True
                return
            self.connection.settimeout(None)
        super().handle()

    def do_GET(self) -> None:
        release: ReleaseServer = self.server.release  # type: ignore[attr-defined]
        release.requests.append(Seen("GET", self.path, dict(self.headers.items())))
        route = release.routes.get(self.path)
        try:
            if route is None:
                self._simple(404, b"not found\n")
            elif self._not_modified(route):
                self.send_response(304)
                self._validators(route)
                self.end_headers()
            else:
                self._serve(route, release.stopping)
        except OSError:  # the client went away: that is what several tests do on purpose
            self.close_connection = True

    def _not_modified(self, route: Route) -> bool:
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if route.etag is not None and inm is not None:
            return inm == route.etag
        return route.last_modified is not None and ims == route.last_modified

    def _validators(self, route: Route) -> None:
        if route.etag is not None:
            self.send_header("ETag", route.etag)
        if route.last_modified is not None:
            self.send_header("Last-Modified", route.last_modified)

    def _simple(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, route: Route, stopping: threading.Event) -> None:
        if route.behaviour == "trickle-headers":  # a status line, then a header byte at a time
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not stopping.wait(route.interval_s):
                self.wfile.write(b"X")
            return
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        self._validators(route)
        if route.behaviour == "truncate":
            self.send_header("Content-Length", str(route.declared_length or len(route.body) + 1))
        elif route.behaviour not in ("close", "endless"):
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if route.behaviour == "trickle":
            for start in range(0, len(route.body), route.chunk_bytes):
                if stopping.wait(route.interval_s):
                    return
                self.wfile.write(route.body[start : start + route.chunk_bytes])
        elif route.behaviour == "endless":
            block = route.body or b"\0" * 65536
            while not stopping.is_set():
                self.wfile.write(block)
        elif route.behaviour == "stall":
            stopping.wait()
        else:
            self.wfile.write(route.body)
        self.close_connection = True
