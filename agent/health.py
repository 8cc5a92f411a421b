"""The health endpoint: ``GET /healthz`` answers 200 with a small JSON object.

The server runs in a background thread, one thread per connection; :func:`health_payload`
is the pure part. It binds its own address (with a listen backlog of ``BACKLOG``) or
serves a listening socket it was given (``LISTEN_FDS``). On stop it finishes the requests
it has accepted (each connection has ``REQUEST_TIMEOUT_S`` to send its request), so a
hand-over to the next agent fails none of them; what is still queued is left in the
socket for the next agent to accept.
"""

import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
BACKLOG = 128
REQUEST_TIMEOUT_S = 5.0


def health_payload(version: str, pid: int, uptime_s: float) -> dict[str, Any]:
    """The body of a healthy answer."""
    return {"status": "ok", "version": version, "pid": pid, "uptime_s": round(uptime_s, 3)}


class _HealthHTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True
    request_queue_size = BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        version: str,
        clock: Callable[[], float],
        sock: socket.socket | None = None,
    ) -> None:
        if sock is not None:
            self.address_family = sock.family
        elif ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.version = version
        self.clock = clock
        self.started_at = clock()
        super().__init__(address, _HealthHandler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
        self.socket.setblocking(False)  # a connection another agent took is not waited for

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-answer is not news; anything else is logged."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            log.exception("error answering %s", client_address)

    def handle_request_noblock(self) -> None:
        """Accept every connection still queued, each handed to a thread: after a hand-over
        the queue holds those that waited for this agent, and one ``select`` per
        connection would drain it slower than they arrive."""
        while True:
            try:
                request, client = self.get_request()
            except OSError:  # BlockingIOError: queue empty, or the other agent took it
                return
            try:
                self.process_request(request, client)
            except Exception:
                self.handle_error(request, client)
                self.shutdown_request(request)


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthHTTPServer
    server_version = "nginx-manager-agent"
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._send(404, {"status": "not found"})
            return
        uptime_s = self.server.clock() - self.server.started_at
        self._send(200, health_payload(self.server.version, os.getpid(), uptime_s))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the launcher polls this endpoint often."""


class HealthServer:
    """The health endpoint, bound at construction and served from a thread.

    Binding errors (``OSError``) surface from the constructor, before anything runs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        version: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sock: socket.socket | None = None,
    ) -> None:
        self._server = _HealthHTTPServer((host, port), version, clock, sock)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)

    def _serve(self) -> None:
        """Accept until ``stop`` writes to the wake pipe: no polling interval, so a stop
        takes effect at once (``serve_forever`` would notice it only at its next poll)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._server.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                    self._server.handle_request_noblock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        if self._server.address_family == socket.AF_UNIX:
            return f"http+unix://{self._server.server_address}{HEALTH_PATH}"
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{HEALTH_PATH}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, finish the requests accepted, close the socket."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        self._server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
