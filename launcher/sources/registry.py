"""The OCI distribution API, spoken to one registry host: references, credentials, auth.

``oci://HOST[:PORT]/REPOSITORY:TAG`` names a release. :class:`Registry` sends requests to
``https://HOST/v2/...`` through the one update client (``make_client``: https on every hop,
the proxy), and answers a ``401`` the way registries ask (RFC 6750 and the distribution
token spec):

- ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``: a GET of the realm (https)
  with ``service`` and ``scope``, anonymously or with the host's user and password (Basic),
  answers ``{"token": ...}``; the request is repeated once with ``Authorization: Bearer``.
  Tokens are kept per scope for this process (one check), until 90% of the
  ``expires_in`` they came with (60 s when not said, the spec's minimum) has passed: a
  download that starts later (the full build after a slow patch) asks for a new one.
- ``WWW-Authenticate: Basic``: the request is repeated with the host's user and password.

Credentials come from a Docker ``config.json`` (``--registry-credentials FILE``):
``{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}``, looked up by the exact
host a request goes to (the origin or a mirror; ``:443`` or not, the same host). They are
sent to that host, or to the https token realm it names, never anywhere else: httpx drops
``Authorization`` on a redirect to another origin (blob storage), a ``401`` counts as a
challenge only when it comes from the host itself (after redirects: the answer's own URL),
and the realm must be https even with ``--allow-http``. A ``401`` from anywhere else (blob
storage, or the origin a mirror redirected to) is an error, never answered.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from launcher.errors import ConfigError, SourceError, TransportError
from launcher.sources.http import (
    METADATA_DEADLINE_S,
    MIN_SPEED_BPS,
    metadata_pace,
    read_capped,
    status_error,
    transport_error,
)
from launcher.sources.pace import SPEED_WINDOW_S, Pace

logger = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 64 * 1024
DEFAULT_TOKEN_LIFETIME_S = 60.0  # a token answer without expires_in (the spec's default)
MAX_CREDENTIALS_BYTES = 1 << 20
_PARAM = re.compile(r'\s*([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


# ---- credentials --------------------------------------------------------------------------


Credentials = dict[str, tuple[str, str]]


def load_credentials(path: Path | str) -> Credentials:
    """Host to (user, password) from a Docker ``config.json``; ConfigError naming the file."""
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_CREDENTIALS_BYTES + 1)
            if os.fstat(file.fileno()).st_mode & 0o077:
                logger.warning("--registry-credentials %s is readable by other users: "
                               "chmod 600 it", path)
    except OSError as exc:
        raise ConfigError(f"cannot read --registry-credentials {path}: "
                          f"{exc.strerror or exc}") from exc
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"--registry-credentials {path} is not valid JSON: {exc}") from exc
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise ConfigError(f"--registry-credentials {path}: no \"auths\" object (Docker's "
                          "config.json format)")
    found: Credentials = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        pair = _pair(entry)
        if pair is None:
            raise ConfigError(f"--registry-credentials {path}: the entry for {key} has no "
                              "\"auth\" (base64 of user:password) or username and password")
        found[_host_key(key)] = pair
    return found


def _pair(entry: dict[str, object]) -> tuple[str, str] | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str):
        return name, secret
    return None


def _host_key(key: str) -> str:
    """``https://host:5000/v1/`` and ``host:5000`` name the same registry."""
    return key.split("://", 1)[-1].split("/", 1)[0].lower()


# ---- the client ---------------------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` as ("bearer", {"realm": ..., ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "")
              .replace('\\"', '"') for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


class AuthError(TransportError):
    """The registry (or its token server) refused us: no or wrong credentials."""


class Registry:
    """One registry host; requests under ``/v2/``, authorised as the host asks."""

    def __init__(self, host: str, *, client: httpx.Client, credentials: Credentials,
                 deadline_s: float = METADATA_DEADLINE_S, min_speed_bps: float = MIN_SPEED_BPS,
                 speed_window_s: float = SPEED_WINDOW_S,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.host = host
        self.base = f"https://{host}/v2/"
        self._origin = _origin(self.base)
        self._client = client
        self._login = _login_for(credentials, self._origin)
        self._limits = (deadline_s, min_speed_bps, speed_window_s)
        self._now = now
        self._tokens: dict[str, tuple[str, float]] = {}  # scope: token, usable until
        self._clock = time.monotonic
        self._basic = False

    def url(self, path: str) -> str:
        """``https://HOST/v2/path``; an absolute path or URL (an upload's Location) as is."""
        if path.startswith("/") or "://" in path:
            return str(httpx.URL(self.base).join(path))
        return self.base + path

    def _ours(self, url: str | httpx.URL) -> bool:
        """Credentials go to this host only (an upload Location may name another)."""
        return _origin(url) == self._origin

    def auth_headers(self, scope: str) -> dict[str, str]:
        """What to send for ``scope`` as far as this host has told us so far."""
        token, until = self._tokens.get(scope, ("", 0.0))
        if token and self._clock() < until:
            return {"Authorization": f"Bearer {token}"}
        self._tokens.pop(scope, None)  # expired: the next request's 401 brings a new one
        if self._basic and self._login is not None:
            return {"Authorization": _basic(self._login)}
        return {}

    def prepare(self, scope: str) -> dict[str, str]:
        """Authorization for a request made elsewhere (a streamed blob download): asks
        ``/v2/`` for the challenge first when this host has not been talked to."""
        if not self.auth_headers(scope):
            response, _ = self.request("GET", "", scope, limit=MAX_TOKEN_BYTES)
            if response.status_code not in (200, 401, 404):
                raise status_error("registry request to", response, self._now)
        return self.auth_headers(scope)

    def request(self, method: str, path: str, scope: str, *,
                headers: dict[str, str] | None = None, content: bytes | None = None,
                limit: int, too_large: SourceError | None = None) -> tuple[httpx.Response, bytes]:
        """``method /v2/path`` after at most one authentication round: the (closed) answer
        and, when it is a success, its body read up to ``limit`` (past it: ``too_large``),
        all within one metadata deadline."""
        url = self.url(path)
        pace = metadata_pace(f"registry request to {url}", *self._limits)
        too_large = too_large or TransportError(f"answer from {url} larger than {limit} bytes")
        try:
            return self._send(method, url, scope, content, headers, limit, too_large, pace)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(url, exc) from exc

    def _send(self, method: str, url: str, scope: str, content: bytes | None,
              headers: dict[str, str] | None, limit: int, too_large: SourceError,
              pace: Pace) -> tuple[httpx.Response, bytes]:
        timeout = pace.timeout(self._client.timeout)
        with pace.deadline():  # the headers too, and the token round inside it
            for attempt in range(2):
                auth = self.auth_headers(scope) if self._ours(url) else {}
                request = self._client.build_request(
                    method, url, content=content, timeout=timeout,
                    headers={**(headers or {}), **auth})
                response = self._client.send(request, stream=True)
                try:
                    if response.status_code in (401, 403) and not self._ours(response.url):
                        raise self._foreign(response, url)
                    if response.status_code == 401 and attempt == 0:
                        self._answer(response.headers.get("www-authenticate", ""), scope, url)
                        continue
                    if response.status_code in (401, 403):
                        raise self._refused(response, url)
                    body = b""
                    if response.is_success and method != "HEAD":
                        body = read_capped(response, limit, too_large, pace)
                    return response, body
                finally:
                    response.close()
        raise AssertionError("unreachable: the second attempt always returns or raises")

    def _answer(self, challenge: str, scope: str, url: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self._login is None:
                raise AuthError(f"registry {self.host} asks for a user and password (HTTP 401 "
                                f"Basic) for {url}: give --registry-credentials with an entry "
                                f"for {self.host}")
            self._basic = True
            return
        if scheme != "bearer" or not params.get("realm"):
            raise AuthError(f"registry {self.host} answered HTTP 401 for {url} without a "
                            "Bearer or Basic challenge")
        asked = self._clock()
        token, lifetime = self._token(params, scope)
        self._tokens[scope] = token, asked + 0.9 * lifetime

    def _token(self, params: dict[str, str], scope: str) -> tuple[str, float]:
        """A token for ``scope`` and how long it is usable (its ``expires_in``)."""
        query = {"service": params["service"]} if params.get("service") else {}
        query["scope"] = params.get("scope") or scope
        realm = params["realm"]
        if httpx.URL(realm).scheme != "https":
            raise AuthError(f"registry {self.host} names a token server that is not https "
                            f"({realm}): refused, even with --allow-http, as the password "
                            "would travel in the clear")
        headers = {"Authorization": _basic(self._login)} if self._login else {}
        who = f"user {self._login[0]}" if self._login else "anonymously"
        pace = metadata_pace(f"token request to {realm}", *self._limits)
        try:
            with pace.deadline(), self._client.stream(
                    "GET", realm, params=query, headers=headers,
                    timeout=pace.timeout(self._client.timeout)) as response:
                if response.status_code in (401, 403):
                    raise AuthError(
                        f"the token server {httpx.URL(realm).host} of registry {self.host} "
                        f"refused {who} for {query['scope']} (HTTP {response.status_code})"
                        + ("" if self._login else ": give --registry-credentials"))
                if not response.is_success:
                    raise status_error("token request to", response, self._now)
                body = read_capped(response, MAX_TOKEN_BYTES, TransportError(
                    f"token answer from {realm} larger than {MAX_TOKEN_BYTES} bytes"), pace)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(realm, exc) from exc
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = document.get("expires_in")
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            token = lifetime = None
        if not isinstance(token, str) or not token:
            raise TransportError(f"the token server at {realm} answered without a token")
        logger.debug("registry %s: token for %s (%s)", self.host, query["scope"], who)
        usable = isinstance(lifetime, int | float) and not isinstance(lifetime, bool) \
            and 0 < lifetime < 1e9
        return token, float(lifetime) if usable else DEFAULT_TOKEN_LIFETIME_S

    def _refused(self, response: httpx.Response, url: str) -> AuthError:
        who = f"user {self._login[0]}" if self._login else "an anonymous request"
        return AuthError(f"registry {self.host} refused {who} for {url} "
                         f"(HTTP {response.status_code})"
                         + ("" if self._login else ": give --registry-credentials"))


    def _foreign(self, response: httpx.Response, url: str) -> AuthError:
        where = response.url.copy_with(query=None)
        return AuthError(f"{where} answered HTTP {response.status_code} to a request for {url}"
                         f" that registry {self.host} redirected there: not answered, as "
                         f"credentials for {self.host} go to {self.host} and its token server "
                         "only")


def _origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port, the default port made explicit (``HOST:443`` is ``HOST``)."""
    parsed = httpx.URL(url)
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
    return parsed.scheme, parsed.host.lower(), port


def _login_for(credentials: Credentials, origin: tuple[str, str, int | None]) -> \
        tuple[str, str] | None:
    """The entry filed under this host, written with its port or (443) without."""
    for key, login in credentials.items():
        try:
            if _origin(f"https://{key}/") == origin:
                return login
        except httpx.InvalidURL:
            continue
    return None


def _basic(login: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
