"""The health endpoint: ``GET /healthz`` answers 200 with a small JSON object.

The server runs in a background thread. A connection whose request has already arrived
whole is answered by that thread at once; one whose request is still arriving gets a
thread of its own (:meth:`_HealthHTTPServer.process_request`). :func:`health_payload` is
the pure part. It binds its own address (with a listen backlog of ``BACKLOG``) or
serves a listening socket it was given (``LISTEN_FDS``).

An inherited socket's ``O_NONBLOCK`` is shared with the launcher and every other agent
generation (a file status flag of the one open socket), so it is never changed: after
``select`` says the socket is readable, a non-blocking one is accepted from up to
``ACCEPT_BATCH`` times (the queue left by a hand-over drains in a few wake-ups), a
blocking one once (it may wait for the next connection when the other agent of an
overlap took this one). The stop request is looked at between accepts, so a flood of
connections cannot hold the stop off.

On stop the connections it accepted are given ``DRAIN_S`` to send their requests and get
their answers; what is still open then (a client that trickles its request) is shut
down, so the agent exits in bounded time. What is still queued is left in the socket for
the next agent to accept.
"""

import contextlib
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
REQUEST_TIMEOUT_S = 5.0  # per read, while serving
ACCEPT_BATCH = 64  # accepts per wake-up from a non-blocking socket
DRAIN_S = 2.0  # on stop, for the connections accepted to be answered
ACCEPT_JOIN_S = 0.2  # on stop, for a serve thread that may be blocked in accept()
PEEK_BYTES = 4096  # a request head longer than this is read in a thread


def health_payload(version: str, pid: int, uptime_s: float) -> dict[str, Any]:
    """The body of a healthy answer."""
    return {"status": "ok", "version": version, "pid": pid, "uptime_s": round(uptime_s, 3)}


class _HealthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # stop() drains the connections itself, for at most DRAIN_S
    block_on_close = False
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
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()  # accepted, not yet closed
        self._changed = threading.Condition()
        super().__init__(address, _HealthHandler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock  # its O_NONBLOCK is shared: left as it is
            self.server_address = sock.getsockname()
        else:
            self.socket.setblocking(False)  # ours alone

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-answer is not news; anything else is logged."""
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            log.exception("error answering %s", client_address)

    def accept_some(self) -> None:
        """The listening socket is readable: accept a batch (one from a blocking socket),
        each connection handed to a thread, until the queue is empty or a stop is asked."""
        batch = 1 if os.get_blocking(self.socket.fileno()) else ACCEPT_BATCH
        for _ in range(batch):
            if self.stopping.is_set():
                return
            try:
                request, client = self.get_request()
            except OSError:  # BlockingIOError: queue empty, or the other agent took it
                return
            with self._changed:
                self._open.add(request)
            try:
                self.process_request(request, client)
            except Exception:
                self.handle_error(request, client)
                self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A request that has arrived whole is answered here and now: a thread costs the
        agent more than the answer (about half its CPU per request). One still arriving
        gets a thread of its own, so a slow client holds up nobody."""
        if arrived_whole(request):
            self.process_request_thread(request, client_address)
        else:
            super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._changed:  # forgotten before it is closed: drain never cuts a reused fd
            self._open.discard(request)
            self._changed.notify_all()
        super().shutdown_request(request)

    def drain(self, until: float) -> int:
        """Wait until every accepted connection is answered and closed, or ``until``
        (``time.monotonic()``); then shut down those still open, so their threads end.
        Returns how many were cut."""
        with self._changed:
            while self._open and (left := until - time.monotonic()) > 0:
                self._changed.wait(left)
            cut = len(self._open)
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            end = time.monotonic() + ACCEPT_JOIN_S  # a cut connection's thread ends at once
            while self._open and (left := end - time.monotonic()) > 0:
                self._changed.wait(left)
        return cut


def arrived_whole(conn: socket.socket) -> bool:
    """True when the request's head (all a GET has) is already in ``conn``'s receive
    buffer, so reading and answering it cannot wait on the client. Only peeks."""
    try:
        head = conn.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (BlockingIOError), or the client is gone
        return False
    return b"\r\n\r\n" in head or b"\n\n" in head


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
            while not self._server.stopping.is_set():
                events = sel.select()
                if any(key.fileobj == self._wake_r for key, _ in events):
                    return
                self._server.accept_some()

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
        """Stop accepting, answer what was accepted (for at most ``DRAIN_S``), close."""
        self.stop_accepting()
        self.finish(time.monotonic() + DRAIN_S)

    def stop_accepting(self) -> None:
        """Ask the serve thread to stop and give it ``ACCEPT_JOIN_S``: one blocked in
        ``accept()`` on a blocking socket holds no connection, and is not waited for
        (the process exits without it)."""
        self._server.stopping.set()
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(ACCEPT_JOIN_S)

    def finish(self, until: float) -> None:
        """Answer the connections accepted until ``until`` (``time.monotonic()``), cut
        those still open, close the socket."""
        if cut := self._server.drain(until):
            log.warning("stopped waiting for %d connection(s) that sent no complete request "
                        "in time; they were closed", cut)
        if self._thread.is_alive():  # blocked in accept(): its socket and pipe stay open
            return
        self._server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
