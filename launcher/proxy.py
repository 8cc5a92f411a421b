"""The proxy every update request may go through: ``--proxy URL|env``, ``--proxy-credentials``.

Without ``--proxy`` the client connects directly and the environment is ignored. With
``--proxy http://HOST:PORT`` every request goes through that proxy, whatever the
environment says; with ``--proxy env`` the proxy comes from ``HTTPS_PROXY`` (https origins)
and ``HTTP_PROXY`` (http origins), either spelling, and ``NO_PROXY`` lists the hosts reached
directly (``*``, ``host``, ``.domain``, ``host:port``).

An https origin is reached through a ``CONNECT`` tunnel: TLS runs end to end with the
origin, so the proxy never sees a request, its ``Authorization`` header (the GitHub token)
or the certificates checked. A plain http origin is forwarded by the proxy as it is: a
request that carries ``Authorization`` (a token, URL credentials) is refused there, so no
secret crosses a proxy in the clear. The proxy's own ``user:password`` comes from
``--proxy-credentials``, read at each check; it is registered with :mod:`launcher.redact`
so it never reaches a log or ``last_error``. Worker side only (httpx).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from launcher import redact
from launcher.errors import ConfigError, InsecureError
from launcher.ops import proxy_environment
from launcher.permissions import check_secret_file


@dataclass(frozen=True)
class Routes:
    """Which proxy serves which origin; ``None`` means a direct connection."""

    https: str | None
    http: str | None
    no_proxy: tuple[str, ...] = ()
    auth: tuple[str, str] | None = None

    def proxy_for(self, url: httpx.URL) -> str | None:
        if _bypassed(url, self.no_proxy):
            return None
        return self.https if url.scheme == "https" else self.http

    def transport(self, verify: ssl.SSLContext | bool) -> httpx.BaseTransport:
        return Router(self, verify)


def from_settings(s: Mapping[str, Any], env: Mapping[str, str]) -> Routes | None:
    """The routes of the worker's settings; ``proxy_env`` is what a running launcher saw
    (the worker's own environment holds none), ``env`` serves a ``check`` run in-process."""
    value = s.get("proxy")
    if not value:
        return None
    auth = read_credentials(Path(s["proxy_credentials"])) if s.get("proxy_credentials") \
        else None
    if value != "env":
        return Routes(https=str(value), http=str(value), auth=auth)
    found = s.get("proxy_env")
    found = found if isinstance(found, dict) else proxy_environment(env)
    no_proxy = tuple(h.strip() for h in str(found.get("NO_PROXY", "")).split(",") if h.strip())
    routes = Routes(https=_env_url(found.get("HTTPS_PROXY")),
                    http=_env_url(found.get("HTTP_PROXY")), no_proxy=no_proxy, auth=auth)
    for url in (routes.https, routes.http):
        if url:  # a password in the variable's URL: masked in every message from now on
            redact.add_secret(httpx.URL(url).password or "")
    return routes


def _env_url(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    url = value if "://" in value else f"http://{value}"
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL as exc:
        raise ConfigError(f"proxy from the environment {redact.redact(url)!r} is not a "
                          f"valid URL: {exc}") from exc
    if scheme != "http":
        raise ConfigError(f"proxy from the environment {redact.redact(url)!r}: only http:// "
                          "proxies are supported (https origins go through CONNECT)")
    return url


def read_credentials(path: Path) -> tuple[str, str]:
    """``user:password`` from the first line of ``path``, after the permission checks."""
    check_secret_file(path, "--proxy-credentials")
    try:
        line = path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--proxy-credentials {path}: cannot read it: {exc}") from exc
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"--proxy-credentials {path}: the first line must be user:password")
    redact.add_secret(password)
    return user, password


def _bypassed(url: httpx.URL, no_proxy: tuple[str, ...]) -> bool:
    host = url.host.lower().strip("[]")
    port = url.port or (443 if url.scheme == "https" else 80)
    for raw in no_proxy:
        entry = raw.lower()
        if entry == "*":
            return True
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        name = name.strip("[]").lstrip(".")
        if want_port and want_port != str(port):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


class Router(httpx.BaseTransport):
    """Sends each request straight or through its proxy (one pooled transport each), and
    refuses to forward an ``Authorization`` header in the clear through a proxy."""

    def __init__(self, routes: Routes, verify: ssl.SSLContext | bool) -> None:
        self.routes = routes
        self.direct = httpx.HTTPTransport(verify=verify)
        self.proxied: dict[str, httpx.HTTPTransport] = {}
        for url in {routes.https, routes.http} - {None}:
            assert url is not None
            self.proxied[url] = httpx.HTTPTransport(
                verify=verify, proxy=httpx.Proxy(url, auth=routes.auth))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = self.routes.proxy_for(request.url)
        if url is None:
            return self.direct.handle_request(request)
        if request.url.scheme != "https" and "authorization" in request.headers:
            raise InsecureError(f"refusing to send credentials for {request.url} through "
                                f"the proxy {url} in the clear: use an https URL")
        return self.proxied[url].handle_request(request)

    def close(self) -> None:
        self.direct.close()
        for transport in self.proxied.values():
            transport.close()
