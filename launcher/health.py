"""The trial's health probe of the local agent, standard library only.

The request is spoken over a bare socket (``http.client`` would bring the email parser
into the resident for one status line), with one overall deadline for connect, request
and status line together: an agent that trickles its answer a byte at a time cannot hold
the loop past it. An https health URL, rare for a local agent, loads ``ssl`` when first
probed and is held to the same deadline.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit


def probe(url: str, timeout_s: float = 1.0) -> bool:
    """True when ``url`` answers 200 within ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except (OSError, ValueError):
        return False
    try:
        if tls:
            import ssl

            sock.settimeout(_left(deadline))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        sock.settimeout(_left(deadline))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 1024:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    except (OSError, ValueError):
        return False
    finally:
        sock.close()
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("health probe deadline passed")
    return left
