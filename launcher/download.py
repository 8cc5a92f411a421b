"""Download one binary: stream, cap, hash, into a temp file beside the target.

The temp file (``.agent.download-*``, mode 0600 while in flight) is created in ``dest_dir`` so
that the resident's rename is atomic, and it is removed on *any* failure, interrupts
included. On success it is fsynced, made 0755 and returned; the caller renames it.

Limits. httpx timeouts apply to each read, not to a transfer, so a server trickling a byte a
second never times out on its own. Between chunks this module enforces the overall deadline,
the minimum average speed over the last ``speed_window_s`` (checked once that much time has
passed) and ``should_stop``. A server that sends *nothing* is caught by the per-read timeout,
which for this request is ``min(client timeout, deadline_s, speed_window_s)``: a stall as
long as the speed window would fail the speed check anyway. So a transfer ends at most one
read timeout after its deadline, and ``should_stop`` is noticed within one read timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from launcher.errors import ChecksumError, DownloadError, HostError, TransportError
from launcher.files import set_mode
from launcher.sources.http import iter_raw_body, status_error, transport_error
from launcher.sources.pace import ALARM_GRACE_S, Alarm, SpeedWindow

logger = logging.getLogger(__name__)

__all__ = ["TEMP_PREFIX", "SpeedWindow", "copy_local", "download"]

TEMP_PREFIX = ".agent.download-"


def download(
    client: httpx.Client,
    url: str,
    dest_dir: Path,
    *,
    expected_sha256: str,
    expected_size: int | None,
    max_bytes: int = 1 << 30,
    deadline_s: float = 600.0,
    min_speed_bps: float = 8192,
    speed_window_s: float = 30.0,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """Download ``url`` into a new temp file in ``dest_dir``, verified; return its path.

    ``headers`` are sent with the request (a registry's ``Authorization``; httpx drops it
    on a redirect to another origin).

    Raises DownloadError (too large, truncated, too slow, past the deadline, cancelled),
    ChecksumError, TransportError (non-2xx, connection and protocol errors; InsecureError
    for plain http) or HostError (the temp file cannot be created or written).
    """
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError(
            f"binary of {expected_size} bytes exceeds the limit of {max_bytes} bytes"
        )
    transfer = _Transfer(
        url=url,
        limit=expected_size if expected_size is not None else max_bytes,
        expected_size=expected_size,
        deadline_s=deadline_s,
        min_speed_bps=min_speed_bps,
        speed_window_s=speed_window_s,
        should_stop=should_stop,
        clock=clock,
        headers=headers,
    )
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest_dir)
    except OSError as exc:
        raise HostError(
            f"cannot create a temporary file in {dest_dir}: {exc.strerror or exc}"
        ) from exc
    path = Path(name)
    try:
        try:
            digest = transfer.run(client, _FileWriter(fd, path))
            expected = expected_sha256.lower()
            if digest != expected:
                raise ChecksumError(f"sha256 mismatch for {url}: expected {expected}, got {digest}")
            _finish(fd, path)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("downloaded %s (%d bytes) to %s", url, transfer.received, path)
    return path


def copy_local(
    source: Path,
    dest_dir: Path,
    *,
    expected_sha256: str,
    expected_size: int | None,
    max_bytes: int = 1 << 30,
) -> Path:
    """A binary from a local release directory (``file://``), under the same rules as a
    download: a temp file beside the target, capped, hashed while written, verified."""
    limit = expected_size if expected_size is not None else max_bytes
    if limit > max_bytes:
        raise DownloadError(f"binary of {limit} bytes exceeds the limit of {max_bytes} bytes")
    try:
        src = source.open("rb")
    except OSError as exc:
        raise TransportError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest_dir)
    except OSError as exc:
        src.close()
        raise HostError(
            f"cannot create a temporary file in {dest_dir}: {exc.strerror or exc}"
        ) from exc
    path = Path(name)
    hasher = hashlib.sha256()
    received = 0
    try:
        with src:
            try:
                writer = _FileWriter(fd, path)
                while chunk := src.read(1 << 20):
                    received += len(chunk)
                    if received > limit:
                        raise DownloadError(f"{source} is larger than {limit} bytes")
                    hasher.update(chunk)
                    writer.write(chunk)
                if expected_size is not None and received < expected_size:
                    raise DownloadError(f"truncated file: got {received} of {expected_size} "
                                        f"bytes from {source}")
                if hasher.hexdigest() != expected_sha256.lower():
                    raise ChecksumError(f"sha256 mismatch for {source}: expected "
                                        f"{expected_sha256.lower()}, got {hasher.hexdigest()}")
                _finish(fd, path)
            finally:
                os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("copied %s (%d bytes) to %s", source, received, path)
    return path


class _Transfer:
    """One streaming GET into an open file, with every limit checked between chunks."""

    def __init__(
        self,
        *,
        url: str,
        limit: int,
        expected_size: int | None,
        deadline_s: float,
        min_speed_bps: float,
        speed_window_s: float,
        should_stop: Callable[[], bool],
        clock: Callable[[], float],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.limit = limit
        self.expected_size = expected_size
        self.deadline_s = deadline_s
        self.min_speed_bps = min_speed_bps
        self.speed_window_s = speed_window_s
        self.should_stop = should_stop
        self.clock = clock
        self.received = 0
        self.start = clock()
        self.window = SpeedWindow(speed_window_s, self.start)

    def run(self, client: httpx.Client, file: _FileWriter) -> str:
        """Stream the body into ``file``; return its sha256 hex digest."""
        self._check(self.start)
        hasher = hashlib.sha256()
        timeout = self._capped_timeout(client.timeout)
        announced: int | None = None
        in_body = False
        try:
            with Alarm(self.deadline_s + ALARM_GRACE_S - (self.clock() - self.start),
                       self._late), \
                    client.stream("GET", self.url, timeout=timeout,
                                  headers=self.headers) as response:
                if not response.is_success:
                    raise status_error("download of", response, lambda: datetime.now(UTC))
                announced = self._announced_length(response)
                in_body = True
                # No chunk size: each network read is handed over as it arrives, so the
                # limits are checked after every read rather than every 64 KiB.
                for chunk in iter_raw_body(response):
                    self.received += len(chunk)
                    if self.received > self.limit:
                        raise DownloadError(
                            f"download of {self.url} is larger than {self.limit} bytes"
                        )
                    hasher.update(chunk)
                    file.write(chunk)
                    now = self.clock()
                    self.window.record(now, self.received)
                    self._check(now)
        except httpx.ReadTimeout as exc:
            if not in_body:
                raise transport_error(self.url, exc) from exc
            raise DownloadError(
                f"download of {self.url} stalled: no data for {timeout.read:g}s"
            ) from exc
        except httpx.RemoteProtocolError as exc:
            if in_body and announced is not None and self.received < announced:
                raise self._truncated(announced) from exc
            raise transport_error(self.url, exc) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(self.url, exc) from exc
        wanted = self.expected_size if self.expected_size is not None else announced
        if wanted is not None and self.received < wanted:
            raise self._truncated(wanted)
        return hasher.hexdigest()

    def _capped_timeout(self, configured: httpx.Timeout) -> httpx.Timeout:
        caps = [self.deadline_s]
        if self.min_speed_bps > 0:
            caps.append(self.speed_window_s)

        def capped(value: float | None) -> float:
            return min([*caps, value]) if value is not None else min(caps)

        return httpx.Timeout(
            connect=capped(configured.connect),
            read=capped(configured.read),
            write=capped(configured.write),
            pool=capped(configured.pool),
        )

    def _announced_length(self, response: httpx.Response) -> int | None:
        header = response.headers.get("content-length", "")
        if not header.isdigit():
            return None
        announced = int(header)
        if announced > self.limit:
            raise DownloadError(
                f"download of {self.url} is larger than {self.limit} bytes"
                f" (Content-Length {announced})"
            )
        return announced

    def _check(self, now: float) -> None:
        if self.should_stop():
            raise DownloadError("download cancelled")
        if now - self.start >= self.deadline_s:
            raise DownloadError(
                f"download of {self.url} exceeded its deadline of {self.deadline_s:g}s"
                f" ({self.received} bytes received)"
            )
        speed = self.window.speed(now, self.received)
        if speed is not None and speed < self.min_speed_bps:
            raise DownloadError(
                f"download of {self.url} too slow: {speed:.0f} B/s over the last"
                f" {self.speed_window_s:g}s (minimum {self.min_speed_bps:g} B/s)"
            )

    def _late(self) -> DownloadError:
        return DownloadError(f"download of {self.url} exceeded its deadline of "
                             f"{self.deadline_s:g}s ({self.received} bytes received)")

    def _truncated(self, wanted: int) -> DownloadError:
        return DownloadError(f"truncated download: got {self.received} of {wanted} bytes")


class _FileWriter:
    """Unbuffered writes to the temp file's descriptor; OSError becomes HostError."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise HostError(f"cannot write {self._path}: {exc.strerror or exc}") from exc


def _finish(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
        set_mode(path, 0o755)
    except OSError as exc:
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from exc
