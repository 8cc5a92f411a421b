"""The health endpoint: ``GET /healthz`` answers 200 with a small JSON object.

The server runs in a background thread; :func:`health_payload` is the pure part.
"""

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


def health_payload(version: str, pid: int, uptime_s: float) -> dict[str, Any]:
    """The body of a healthy answer."""
    return {"status": "ok", "version": version, "pid": pid, "uptime_s": round(uptime_s, 3)}


class _HealthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        version: str,
        clock: Callable[[], float],
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.version = version
        self.clock = clock
        self.started_at = clock()
        super().__init__(address, _HealthHandler)


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthHTTPServer
    server_version = "nginx-manager-agent"

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
    ) -> None:
        self._server = _HealthHTTPServer((host, port), version, clock)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="health",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{HEALTH_PATH}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
