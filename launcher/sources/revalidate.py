"""Ask whether the last accepted manifest still stands: one conditional GET, without httpx.

Most checks end in "not modified", and importing httpx (with ``http.client`` and the
``email`` package under it) is the largest part of such a check's CPU
(``bench/checkcost.py``, docs/PERFORMANCE.md). So before the full check the worker sends
the request ``HttpSource.fetch`` would send, over a bare socket: the same validators,
``User-Agent`` and ``Accept-Encoding: identity`` (``Connection: close``: one request); the
same trust (certifi's bundle, or the same certificates as a hashed directory, plus
``--ca-file``; the host name checked); https on every hop
unless plain http is allowed; at most :data:`MAX_REDIRECTS` redirects; each operation's
timeout capped at the metadata deadline, which also ends the whole exchange. It reads the
response's head only, at least as strictly as httpx does (``launcher.sources.head``).

Only a 304 is an answer here. Anything else (a new manifest, an error status, an interim
1xx, a refused connection, a certificate that does not verify, a URL with credentials or
characters that need encoding) is "ask again properly": :func:`not_modified` returns False
and the worker does the full check through httpx, which decides and words every error as it
always has. Whether a 304 may be trusted at all (validators accepted under a key still
configured, then the expiry) stays the worker's.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urljoin, urlsplit

from launcher.sources import head as response_head
from launcher.sources.base import Validators

if TYPE_CHECKING:
    import ssl  # only an https hop imports it

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5  # launcher.sources.http.MAX_REDIRECTS
TIMEOUT_S = 30.0  # make_client's per-operation timeout
MAX_HEAD_BYTES = 64 * 1024  # a 304's status line and headers
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PORTS = {"https": 443, "http": 80}
_DIST = "nginx_manager_agent"


def applies(s: Mapping[str, Any]) -> bool:
    """A manifest at an http(s) URL, fetched directly: not GitHub's API, an OCI registry, a
    local directory or anything sent through a proxy (httpx does those)."""
    if s.get("github_repo") or any(v for k, v in s.items() if k.startswith("proxy")):
        return False
    return urlsplit(str(s.get("manifest_url") or "")).scheme in ("http", "https")


def not_modified(url: str, validators: Validators, *, ca_file: str | None, allow_http: bool,
                 deadline_s: float, ca_dir: str | None = None) -> bool:
    """True when the source answered 304 to ``validators`` (directly or after redirects).
    ``ca_dir``: certifi's bundle as a hashed directory (``launcher.sources.cadir``), which
    loads only the CA a chain names."""
    headers = {"User-Agent": user_agent(), "Accept": "*/*", "Accept-Encoding": "identity"}
    if validators.etag is not None:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified is not None:
        headers["If-Modified-Since"] = validators.last_modified
    start = time.monotonic()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            left = deadline_s - (time.monotonic() - start)
            request = _request(parts, headers, allow_http)
            if left <= 0 or request is None:
                return False
            until = time.monotonic() + left
            status, location = (_exchange_tls(parts, request, ca_file, ca_dir, until)
                                if parts.scheme == "https" else
                                _exchange(parts, request, None, until))
            if status == 304:
                return True
            if status not in _REDIRECTS or not location:
                return False
            url = urljoin(url, location)
    except Exception as exc:  # whatever failed, the full check will say it properly
        log.debug("conditional request to %s: %s; doing the full check", url, exc)
    return False


def _request(parts: SplitResult, headers: dict[str, str], allow_http: bool) -> bytes | None:
    """The request's bytes; None for what is left to httpx: plain http unless allowed,
    credentials in the URL, a path or a header value that would need encoding."""
    if not (parts.scheme == "https" or (parts.scheme == "http" and allow_http)):
        return None
    if not parts.hostname or parts.username is not None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if parts.port is not None and parts.port != _PORTS[parts.scheme]:
        host += f":{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not all(map(_printable, [target, host, *headers.values()])) or " " in target:
        return None
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}",
             *(f"{name}: {value}" for name, value in headers.items()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _printable(text: str) -> bool:
    """Visible ASCII and inner spaces only: nothing that could end a line or a header."""
    return text.isascii() and text.isprintable() and text == text.strip()


def _exchange(parts: SplitResult, request: bytes, context: ssl.SSLContext | None,
              until: float) -> tuple[int, str | None]:
    """Send ``request``; read the response head: (status, the Location header or None).
    Each operation waits at most :data:`TIMEOUT_S`, and the whole exchange ends at ``until``
    (``time.monotonic()``), the connection to each address and a trickled head included."""
    host = str(parts.hostname)
    with _connect(host, parts.port or _PORTS[parts.scheme], until) as raw:
        raw.settimeout(_left(until))  # the TLS handshake
        sock = context.wrap_socket(raw, server_hostname=host) if context else raw
        with sock:
            sock.settimeout(_left(until))
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                sock.settimeout(_left(until))
                chunk = sock.recv(4096)
                if not chunk or len(head) > MAX_HEAD_BYTES:
                    raise ConnectionError("the response head ended early or is too long")
                head += chunk
    return response_head.parse(head.split(b"\r\n\r\n", 1)[0])


def _connect(host: str, port: int, until: float) -> socket.socket:
    """A connection to the first of the host's addresses that answers, tried in order,
    each with the time left until ``until`` (``socket.create_connection`` would give each
    the whole timeout: three dead addresses, three times the deadline)."""
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(until))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError) and until <= time.monotonic():
                break
            continue
        return sock
    raise error


def _left(until: float) -> float:
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("past the metadata deadline")
    return min(TIMEOUT_S, left)


def _exchange_tls(parts: SplitResult, request: bytes, ca_file: str | None,
                  ca_dir: str | None, until: float) -> tuple[int, str | None]:
    """:func:`_exchange` over TLS, trusting certifi's bundle plus ``ca_file`` as make_client
    does. Loading certifi's ~120 certificates is most of an https check's CPU, so with a
    ``ca_file`` the handshake is tried against it alone first: a chain that verifies to one
    of its CAs verifies against the union just the same, and one that does not is tried
    again against the union, so what is trusted does not change."""
    import ssl

    if ca_file is not None:
        try:
            return _exchange(parts, request, tls_context(ca_file, with_certifi=False), until)
        except ssl.SSLCertVerificationError:
            log.debug("%s: not verified by %s alone; with certifi's bundle too", parts.netloc,
                      ca_file)
    return _exchange(parts, request, tls_context(ca_file, ca_dir=ca_dir), until)


@functools.cache
def tls_context(ca_file: str | None, *, with_certifi: bool = True,
                ca_dir: str | None = None) -> ssl.SSLContext:
    """make_client's trust, certifi's bundle plus ``ca_file`` when given (or ``ca_file``
    alone), built once per process; the bundle read from ``ca_dir`` when given."""
    import ssl

    if with_certifi and ca_dir is not None:
        context = ssl.create_default_context(capath=ca_dir)  # capath: no system store
    else:
        context = ssl.create_default_context(
            cafile=certifi_bundle() if with_certifi else ca_file)
    if with_certifi and ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def certifi_bundle() -> str:
    """``certifi.where()`` without importing certifi (its importlib.resources costs more than
    the rest of a check's imports): ``cacert.pem`` beside the certifi package the import
    system finds; ``certifi.where()`` itself when that is no plain file (a zip install)."""
    import importlib.util  # runpy, which started the worker, has it loaded already

    spec = importlib.util.find_spec("certifi")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "cacert.pem")
        if os.path.isfile(path):
            return path
    import certifi

    return str(certifi.where())


def user_agent() -> str:
    """``nginx-manager-launcher/VERSION`` as make_client sends it, without importing
    importlib.metadata: the first ``nginx_manager_agent-*.dist-info`` on ``sys.path``."""
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.lower().startswith(f"{_DIST}-") and name.endswith(".dist-info"):
                version = _metadata_version(os.path.join(entry, name, "METADATA"))
                if version:
                    return f"nginx-manager-launcher/{version}"
    return "nginx-manager-launcher/unknown"


def _metadata_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fp:
            for line in fp:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
    except (OSError, UnicodeError):
        pass
    return None
