"""Download one binary: stream, cap, hash, into a file beside the target; resume when cut.

The file is created in ``dest_dir`` (mode 0600 while in flight) so that the resident's
rename is atomic. On success it is fsynced, made 0755 and returned; the caller renames it.

Resume (``resume=True``, the default). The file is a *partial* named after the expected
sha256 (``.agent.partial-*``, see :mod:`launcher.partial`). A transfer cut after it made
progress is resumed within the call: a new request with ``Range: bytes=N-`` and ``If-Range``
(the strong ETag, else Last-Modified, of the response that was cut), up to ``attempts``
requests within the one deadline. A transfer that fails anyway leaves the partial and its
validators beside the target, and the next call for the same build continues from there; a
call for another build removes it. A 200 to a Range request (the server ignores ranges, or
the validator no longer matches) restarts cleanly from byte 0 with that response; a 206 whose
``Content-Range`` does not start where asked or names another length, and a 416, restart
with a plain request. The final sha256 still decides, over the whole file: a resumed file
whose hash is wrong is downloaded once more from the start (its parts may come from two
versions), then refused. A checksum failure, a body larger than the cap and a host error
(disk full) discard the partial. With ``resume=False`` the file is a fresh temp file
(``.agent.download-*``) removed on any failure, as before.

Limits. httpx timeouts apply to each read, not to a transfer, so a server trickling a byte a
second never times out on its own. Between chunks this module enforces the overall deadline,
the minimum average speed over the last ``speed_window_s`` (checked once that much time has
passed) and ``should_stop``. A server that sends *nothing* is caught by the per-read timeout,
which for this request is ``min(client timeout, deadline_s, speed_window_s)``: a stall as
long as the speed window would fail the speed check anyway. So a transfer ends at most one
read timeout after its deadline, and ``should_stop`` is noticed within one read timeout.

Progress: every chunk is reported to a :class:`launcher.progress.Progress` (a log line every
~10 s or 10%; with a file, what ``status`` shows).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from launcher import partial
from launcher.errors import (
    ChecksumError,
    DownloadError,
    HostError,
    InsecureError,
    TransportError,
)
from launcher.files import open_regular, set_mode
from launcher.progress import Progress
from launcher.sources.http import iter_raw_body, status_error, transport_error
from launcher.sources.pace import ALARM_GRACE_S, Alarm, SpeedWindow

logger = logging.getLogger(__name__)

__all__ = ["TEMP_PREFIX", "Progress", "SpeedWindow", "copy_local", "download"]

TEMP_PREFIX = ".agent.download-"
RESUME_ATTEMPTS = 4  # requests per call: the first and up to three resumptions
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    resume: bool = True,
    attempts: int = RESUME_ATTEMPTS,
    progress: Progress | None = None,
    keep_partials: Collection[str] = (),
    resume_as: str | None = None,
) -> Path:
    """Download ``url`` into a file in ``dest_dir``, verified; return its path.

    ``headers`` are sent with every request (a registry's ``Authorization``; httpx drops it
    on a redirect to another origin); a callable is asked again before each request, so a
    resumption an hour into a slow download carries a token that is still good.
    ``progress`` (default: log lines only) is told after every chunk. See the module text
    for resume; ``keep_partials`` are the sha256s of the same release's other files, whose
    partials this download leaves alone; ``resume_as`` names the file for resuming instead
    of ``url`` (an OCI blob's digest: any host serving it continues the same partial).

    Raises DownloadError (too large, truncated, too slow, past the deadline, cancelled),
    ChecksumError, TransportError (non-2xx, connection and protocol errors; InsecureError
    for plain http) or HostError (the file cannot be created or written).
    """
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError(
            f"binary of {expected_size} bytes exceeds the limit of {max_bytes} bytes"
        )
    expected = expected_sha256.lower()
    transfer = _Transfer(
        url=url,
        limit=expected_size if expected_size is not None else max_bytes,
        expected_size=expected_size,
        deadline_s=deadline_s,
        min_speed_bps=min_speed_bps,
        speed_window_s=speed_window_s,
        should_stop=should_stop,
        clock=clock,
        headers=headers if callable(headers) else lambda: headers or {},
        progress=progress or Progress(url, expected_size, clock=clock),
    )
    if resume:
        fd, path, saved = partial.open_slot(dest_dir, expected, resume_as or url,
                                           expected_size, keep_partials)
    else:
        fd, path = _new_temp(dest_dir)
        saved = None
    if resume:
        transfer.on_response = lambda v: partial.keep(path, resume_as or url, expected,
                                                      expected_size, v)
    try:
        try:
            digest = _run(client, transfer, _FileWriter(fd, path), saved,
                          attempts=max(1, attempts) if resume else 1, expected=expected)
            if digest != expected:
                raise ChecksumError(f"sha256 mismatch for {url}: expected {expected}, got {digest}")
            _finish(fd, path)
        finally:
            os.close(fd)
            transfer.progress.close()
    except BaseException as exc:
        if (resume and transfer.keep and transfer.received > 0
                and not isinstance(exc, HostError | ChecksumError)):
            partial.keep(path, resume_as or url, expected, expected_size,
                         transfer.validators)
        else:
            partial.discard(path)
        raise
    partial.done(path)
    resumed = f", resumed at byte {transfer.resumed_from}" if transfer.resumed_from else ""
    logger.info("downloaded %s (%d bytes%s) to %s", url, transfer.received, resumed, path)
    return path


def _run(client: httpx.Client, transfer: _Transfer, writer: _FileWriter,
         saved: partial.Validators | None, *, attempts: int, expected: str) -> str:
    """Requests until the body is complete; its sha256 (over the whole file)."""
    offset = writer.size() if saved is not None else 0
    validators = saved if saved is not None and offset else partial.Validators()
    if not offset:
        writer.truncate()
    transfer.validators = validators
    if offset and offset == transfer.expected_size:  # complete already (killed before use)
        digest = writer.hash_prefix(offset).hexdigest()
        if digest == expected:
            transfer.received = offset
            logger.info("the partial download of %s is complete", transfer.url)
            return digest
        writer.truncate()
        offset, validators = 0, partial.Validators()
    restarted = False
    for left in range(attempts - 1, -1, -1):
        before = offset
        transfer.keep = True
        try:
            digest = transfer.run(client, writer, writer.hash_prefix(offset), offset, validators)
        except _Restart as why:
            logger.warning("%s; downloading %s from the start", why, transfer.url)
            writer.truncate()
            offset, validators = 0, partial.Validators()
            transfer.received = 0
            if left == 0:
                raise DownloadError(f"download of {transfer.url}: {why}") from None
            continue
        except (DownloadError, TransportError) as exc:
            transfer.keep = _resumable(exc)
            if (not transfer.keep or transfer.received <= before or left == 0
                    or not transfer.time_left()):
                raise
            logger.warning("download of %s cut at %d of %s bytes (%s); resuming",
                           transfer.url, transfer.received, transfer.expected_size or "?", exc)
            offset, validators = transfer.received, transfer.validators
            continue
        if digest != expected and transfer.resumed_from and not restarted and left > 0:
            logger.warning("sha256 mismatch for %s after resuming at byte %d; downloading it "
                           "again from the start", transfer.url, transfer.resumed_from)
            restarted = True
            writer.truncate()
            offset, validators = 0, partial.Validators()
            transfer.received = transfer.resumed_from = 0
            continue
        transfer.keep = False  # a wrong hash after this discards the file
        return digest
    raise AssertionError("unreachable: the last attempt returns or raises")


def _resumable(exc: Exception) -> bool:
    """Whether what was received so far may be kept for later: after a cut, a stall, a
    deadline, a cancel or an error answer it is still a good prefix; after a body over the
    cap or a refused (plain http) URL it is not."""
    if isinstance(exc, InsecureError):
        return False
    return not (isinstance(exc, DownloadError) and "is larger than" in str(exc))


def _new_temp(dest_dir: Path) -> tuple[int, Path]:
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest_dir)
    except OSError as exc:
        raise HostError(
            f"cannot create a temporary file in {dest_dir}: {exc.strerror or exc}"
        ) from exc
    return fd, Path(name)


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
        src = open_regular(source)
    except OSError as exc:
        raise TransportError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        fd, path = _new_temp(dest_dir)
    except HostError:
        src.close()
        raise
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


class _Restart(Exception):
    """The answer to a Range request cannot be appended: start again from byte 0."""


class _Transfer:
    """Streaming GETs into an open file, with every limit checked between chunks."""

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
        headers: Callable[[], Mapping[str, str]],
        progress: Progress,
    ) -> None:
        self.url = url
        self.limit = limit
        self.expected_size = expected_size
        self.deadline_s = deadline_s
        self.min_speed_bps = min_speed_bps
        self.speed_window_s = speed_window_s
        self.should_stop = should_stop
        self.clock = clock
        self.headers = headers
        self.progress = progress
        self.received = 0
        self.resumed_from = 0
        self.keep = False
        self.validators = partial.Validators()
        self.on_response: Callable[[partial.Validators], None] = lambda _: None
        self.start = clock()
        self.window = SpeedWindow(speed_window_s, self.start)

    def time_left(self) -> bool:
        return self.clock() - self.start < self.deadline_s

    def run(self, client: httpx.Client, file: _FileWriter, hasher: hashlib._Hash, offset: int,
            validators: partial.Validators) -> str:
        """One request for the body from ``offset`` on into ``file``; the whole sha256."""
        self.received = offset
        self._check(self.clock())
        timeout = self._capped_timeout(client.timeout)
        announced: int | None = None
        in_body = False
        # Asking for the headers may take a round trip (a registry token): within the deadline.
        with Alarm(self.deadline_s + ALARM_GRACE_S - (self.clock() - self.start), self._late):
            headers = dict(self.headers())
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range := validators.if_range():
                headers["If-Range"] = if_range
        try:
            with Alarm(self.deadline_s + ALARM_GRACE_S - (self.clock() - self.start),
                       self._late), \
                    client.stream("GET", self.url, timeout=timeout, headers=headers) as response:
                announced = self._begin(response, file, offset)
                if offset and not self.received:  # the whole file came again
                    hasher = hashlib.sha256()
                in_body = True
                self.progress.begin(self.received)
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
                    self.progress.update(self.received)
                    self._check(now)
        except httpx.ReadTimeout as exc:
            if not in_body:
                raise transport_error(self.url, exc) from exc
            raise DownloadError(
                f"download of {self.url} stalled: no data for {timeout.read:.3g}s"
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

    def _begin(self, response: httpx.Response, file: _FileWriter, offset: int) -> int | None:
        """Check the answer's status (and range); the length the whole file will have."""
        if offset and response.status_code == 416:
            raise _Restart(f"the server refused the range from byte {offset} (416)")
        if not response.is_success:
            raise status_error("download of", response, lambda: datetime.now(UTC))
        self.validators = partial.Validators.of(response.headers)
        announced = None
        if offset and response.status_code == 206:
            announced = self._check_range(response, offset)
            if not self.resumed_from:
                self.resumed_from = offset
            logger.info("resuming %s at byte %d", self.url, offset)
        elif offset:
            logger.warning("the server sent all of %s again (%d, not 206); starting over "
                           "from byte 0", self.url, response.status_code)
            file.truncate()
            self.received = offset = self.resumed_from = 0
        if announced is None:
            announced = self._announced_length(response, offset)
        self.on_response(self.validators)
        return announced

    def _check_range(self, response: httpx.Response, offset: int) -> int:
        """The total length a 206 announces, if it continues exactly at ``offset``."""
        header = response.headers.get("content-range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None:
            raise _Restart(f"the server answered the range with Content-Range {header!r}")
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != offset:
            raise _Restart(f"the server resumed at byte {first}, not {offset}")
        length = int(total) if total != "*" else None
        if length is not None and last != length - 1:
            raise _Restart(f"the server sent a partial range ({header})")
        if self.expected_size is not None and length not in (None, self.expected_size):
            raise _Restart(f"the server names a length of {length}, not {self.expected_size}")
        if length is not None and length > self.limit:
            raise DownloadError(f"download of {self.url} is larger than {self.limit} bytes"
                                f" (Content-Range {header})")
        return length if length is not None else last + 1

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

    def _announced_length(self, response: httpx.Response, offset: int) -> int | None:
        header = response.headers.get("content-length", "")
        if not header.isdigit():
            return None
        announced = offset + int(header)
        if announced > self.limit:
            raise DownloadError(
                f"download of {self.url} is larger than {self.limit} bytes"
                f" (Content-Length {header})"
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
    """Unbuffered writes at the end of the file's descriptor; OSError becomes HostError."""

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

    def size(self) -> int:
        try:
            return os.fstat(self._fd).st_size
        except OSError as exc:
            raise HostError(f"cannot read {self._path}: {exc.strerror or exc}") from exc

    def truncate(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise HostError(f"cannot write {self._path}: {exc.strerror or exc}") from exc

    def hash_prefix(self, offset: int) -> hashlib._Hash:
        """sha256 of the first ``offset`` bytes, the file positioned after them (the rest,
        a cut write's tail, is cut off)."""
        hasher = hashlib.sha256()
        try:
            os.ftruncate(self._fd, offset)
            os.lseek(self._fd, 0, os.SEEK_SET)
            left = offset
            while left:
                chunk = os.read(self._fd, min(left, 1 << 20))
                if not chunk:
                    raise HostError(f"{self._path} is shorter than {offset} bytes")
                hasher.update(chunk)
                left -= len(chunk)
            os.lseek(self._fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise HostError(f"cannot read {self._path}: {exc.strerror or exc}") from exc
        return hasher


def _finish(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
        set_mode(path, 0o755)
    except OSError as exc:
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from exc
