"""The manifest over HTTP(S), and the one httpx client every update request goes through.

:func:`make_client` builds the client: no environment (``trust_env=False``; ``--proxy env``
is read explicitly, see ``launcher.proxy``), at most five redirects, and, unless plain
http is allowed, an https check on every request *before* it is sent — the configured URL
and each redirect hop alike. :func:`transport_error` is the one place httpx exceptions
become :class:`TransportError`; the download module uses it too.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING

import certifi
import httpx

from launcher.errors import (
    ConfigError,
    InsecureError,
    ManifestError,
    SignatureError,
    SourceError,
    TransportError,
)
from launcher.sources.base import FetchResult, Validators
from launcher.sources.pace import SPEED_WINDOW_S, Pace

__all__ = [
    "FetchResult",
    "HttpSource",
    "Validators",
    "iter_raw_body",
    "make_client",
    "metadata_pace",
    "parse_retry_after",
    "status_error",
    "transport_error",
]

if TYPE_CHECKING:
    from launcher.proxy import Routes

logger = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024
METADATA_DEADLINE_S = 60.0
MIN_SPEED_BPS = 8192.0
MAX_REDIRECTS = 5
_RETRY_STATUSES = frozenset({429, 503})


def _user_agent() -> str:
    try:
        version = metadata.version("nginx-manager-agent")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"nginx-manager-launcher/{version}"


def make_client(
    *,
    timeout_s: float = 30.0,
    ca_file: str | None = None,
    allow_http: bool = False,
    transport: httpx.BaseTransport | None = None,
    proxy: Routes | None = None,
) -> httpx.Client:
    """The client for every update request (manifest, signature, binaries).

    ``timeout_s`` bounds each connect, read and write, not a whole transfer (the download
    module adds a deadline). ``ca_file`` adds a CA bundle to certifi's. ``proxy`` routes
    requests through a proxy (``launcher.proxy``); ``transport`` is for tests.
    """
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = _ssl_context(ca_file)
    hooks: dict[str, list[Callable[..., object]]] = {"request": [], "response": []}
    if not allow_http:
        hooks["request"].append(_require_https)
        hooks["response"].append(_refuse_http_redirect)
    if proxy is not None and transport is None:
        transport = proxy.transport(verify)
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        verify=verify,
        trust_env=False,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks=hooks,
        # Bytes on disk must be the bytes the server hashed: no transfer compression.
        headers={"User-Agent": _user_agent(), "Accept-Encoding": "identity"},
        transport=transport,
    )


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from exc
    return context


def _require_https(request: httpx.Request) -> None:
    if request.url.scheme != "https":
        raise InsecureError(f"refusing plain http URL {request.url}: use https or --allow-http")


def _refuse_http_redirect(response: httpx.Response) -> None:
    if not response.has_redirect_location:
        return
    target = response.request.url.join(response.headers["location"])
    if target.scheme != "https":
        raise InsecureError(
            f"refusing redirect from {response.request.url} to plain http URL {target}:"
            " use https or --allow-http"
        )


def transport_error(url: str, exc: httpx.HTTPError | httpx.InvalidURL) -> TransportError:
    """Translate an httpx exception into a TransportError that names the URL and cause."""
    if isinstance(exc, httpx.TooManyRedirects):
        return TransportError(f"too many redirects from {url} (at most {MAX_REDIRECTS})")
    if isinstance(exc, httpx.ProxyError):
        return TransportError(f"the proxy did not let the request to {url} through: "
                              f"{str(exc) or type(exc).__name__}")
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportError(f"cannot connect to {url}: timed out")
    if isinstance(exc, httpx.ConnectError):
        return TransportError(f"cannot connect to {url}: {_connect_cause(exc)}")
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"request to {url} timed out ({type(exc).__name__})")
    detail = str(exc) or type(exc).__name__
    return TransportError(f"request to {url} failed: {detail}")


def _connect_cause(exc: BaseException) -> str:
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text or type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def status_error(
    what: str, response: httpx.Response, now: Callable[[], datetime]
) -> TransportError:
    """TransportError for a non-2xx answer; 429 and 503 carry their Retry-After.

    ``what`` leads the message: ``"manifest request to"`` gives
    ``manifest request to https://... failed: HTTP 500 Internal Server Error``.
    """
    retry_after = None
    if response.status_code in _RETRY_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now())
    message = (
        f"{what} {response.request.url} failed:"
        f" HTTP {response.status_code} {response.reason_phrase}".rstrip()
    )
    if retry_after is not None:
        message += f" (retry after {retry_after:g}s)"
    return TransportError(message, retry_after_s=retry_after)


def iter_raw_body(response: httpx.Response, chunk_size: int | None = None) -> Iterator[bytes]:
    """The body exactly as sent (no content decoding), streamed.

    A response built in memory (``httpx.Response(content=...)``, e.g. from a MockTransport)
    counts as already streamed; its content is yielded as one chunk.
    """
    if response.is_stream_consumed:
        yield response.content
        return
    yield from response.iter_raw(chunk_size)


def read_capped(response: httpx.Response, limit: int, too_large: SourceError,
                pace: Pace | None = None) -> bytes:
    """The whole body, refused with ``too_large`` past ``limit`` bytes (announced or sent),
    and past ``pace``'s deadline or below its minimum speed."""
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise too_large
    body = bytearray()
    for chunk in iter_raw_body(response):
        body += chunk
        if len(body) > limit:
            raise too_large
        if pace is not None:
            pace.check(len(body))
    return bytes(body)


def metadata_pace(what: str, deadline_s: float, min_speed_bps: float,
                  speed_window_s: float = SPEED_WINDOW_S) -> Pace:
    """The limits of one small fetch (manifest, signature, API answer, SHA256SUMS)."""
    return Pace(what, deadline_s=deadline_s, min_speed_bps=min_speed_bps,
                speed_window_s=speed_window_s)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


class HttpSource:
    """A manifest at an http(s) URL, fetched conditionally and read up to a byte cap."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        deadline_s: float = METADATA_DEADLINE_S,
        min_speed_bps: float = MIN_SPEED_BPS,
        speed_window_s: float = SPEED_WINDOW_S,
    ) -> None:
        self.url = url
        self._client = client
        self._max_bytes = max_manifest_bytes
        self._now = now
        self._limits = (deadline_s, min_speed_bps, speed_window_s)

    def _pace(self, what: str) -> Pace:
        return metadata_pace(what, *self._limits)

    def fetch(self, validators: Validators | None) -> FetchResult:
        headers = {}
        if validators is not None and validators.etag is not None:
            headers["If-None-Match"] = validators.etag
        if validators is not None and validators.last_modified is not None:
            headers["If-Modified-Since"] = validators.last_modified
        pace = self._pace(f"manifest request to {self.url}")
        try:
            with pace.deadline(), self._client.stream(
                    "GET", self.url, headers=headers,
                    timeout=pace.timeout(self._client.timeout)) as response:
                return self._answer(response, validators, pace)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(self.url, exc) from exc

    def _answer(self, response: httpx.Response, sent: Validators | None,
                pace: Pace) -> FetchResult:
        received = Validators(
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )
        if response.status_code == 304 and sent:
            logger.debug("manifest %s not modified", self.url)
            return FetchResult(not_modified=True, body=None, validators=received or sent)
        if not response.is_success:
            raise status_error("manifest request to", response, self._now)
        body = self._read_capped(response, pace)
        return FetchResult(not_modified=False, body=body, validators=received)

    def _read_capped(self, response: httpx.Response, pace: Pace, limit: int | None = None,
                     too_large: SourceError | None = None) -> bytes:
        limit = self._max_bytes if limit is None else limit
        return read_capped(response, limit,
                           too_large or ManifestError(f"manifest larger than {limit} bytes"),
                           pace)

    def fetch_signature(self, max_bytes: int) -> bytes:
        """The detached signature beside the manifest (``<path>.minisig``), unconditionally.

        404 or 410 is a missing signature (:class:`SignatureError`); other failures are the
        transport's, like the manifest's own.
        """
        parts = httpx.URL(self.url)
        url = str(parts.copy_with(path=parts.path + ".minisig"))
        pace = self._pace(f"signature request to {url}")
        try:
            with pace.deadline(), self._client.stream(
                    "GET", url, timeout=pace.timeout(self._client.timeout)) as response:
                if response.status_code in (404, 410):
                    raise SignatureError(f"missing signature: GET {url} answered "
                                         f"{response.status_code}")
                if not response.is_success:
                    raise status_error("signature request to", response, self._now)
                return self._read_capped(response, pace, max_bytes, SignatureError(
                    f"signature file {url} larger than {max_bytes} bytes"))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(url, exc) from exc
