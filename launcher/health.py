"""The trial's health probe of the local agent, standard library only.

Plain http (the local agent) is spoken over a bare socket: ``http.client`` would bring the
email parser and ssl into the resident for one status line. An https health URL, rare for a
local agent, loads ``http.client`` when first probed.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def probe(url: str, timeout_s: float = 1.0) -> bool:
    """True when ``url`` answers 200 within the timeout."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        return _probe_plain(parts.hostname or "127.0.0.1", parts.port or 80,
                            parts.path or "/", timeout_s)
    import http.client

    conn_cls = http.client.HTTPSConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read(65536)
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _probe_plain(host: str, port: int, path: str, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    parts = head.split(b"\r\n", 1)[0].split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == b"200"


