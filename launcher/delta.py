"""Delta updates: rebuild the new build from the installed one and a small signed patch.

The format, ``zstd-patch``, is the new build in segments of at most 4 MiB (``SEGMENT``;
the release tool makes them a quarter of the build), each a zstd frame compressed with the
whole old build as a raw-content dictionary (what ``zstd --patch-from=OLD`` writes, per
segment); chosen by measurement over bsdiff4 on real releases (docs/PERFORMANCE.md,
``bench/delta.py``): patches about as small, and applying one streams, so memory stays at
the old build plus one segment (bsdiff4 holds the old build, the new one and the patch's
decompressed blocks at once). zstandard is imported only here, in the worker,
through its cffi backend (:func:`_zstd`).

A patch is used (:func:`choose`) only when the installed build's sha256 is its
``from_sha256``, its format is known, and it is smaller than the build. :func:`apply_patch`
rebuilds into a temp file beside the target and checks, before decoding, that the first
frame announces at most one segment (and no more than the build); the decoder refuses a
window larger than the old build and that frame; while decoding, the output is capped at
the signed size and hashed; at the end size and sha256 must be the signed ones. Every
failure is a LauncherError; the worker then downloads the full build.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import ChecksumError, DownloadError, HostError
from launcher.files import set_mode

if TYPE_CHECKING:
    import zstandard

    from launcher.manifest import Binary, Delta

log = logging.getLogger(__name__)

FORMAT = "zstd-patch"
TEMP_PREFIX = ".agent.delta-"
MAX_BASE_RATIO = 1.5  # a base this much bigger than the build costs too much memory
_CHUNK = 1 << 16
SEGMENT = 4 << 20  # the most of the new build's bytes per frame (packaging/release_deltas.py)
_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX


def choose(binary: Binary, installed_sha256: str | None) -> Delta | None:
    """The patch to use from the installed build, or None."""
    if binary.size is None or installed_sha256 is None:
        return None
    for delta in binary.deltas:
        if (delta.from_sha256 == installed_sha256 and delta.format == FORMAT
                and delta.size < binary.size):
            return delta
    return None


def window_cap(base_size: int, size: int) -> int:
    """The largest window a patch may ask for: a power of two covering the old build and one
    segment of the new."""
    return 1 << max(10, (base_size + size).bit_length())


def _zstd() -> Any:
    """python-zstandard's cffi backend (cffi comes with cryptography): its dictionary refers
    to the bytes it is given, where the C backend copies them, so the old build is in memory
    once rather than twice (bench/delta.py). The C backend if cffi cannot be loaded."""
    try:
        backend = importlib.import_module("zstandard.backend_cffi")
    except ImportError:
        import zstandard

        log.warning("zstandard's cffi backend is not available: applying a patch holds the "
                    "installed build in memory twice")
        return zstandard
    return backend


def apply_patch(base: Path, patch: Path, dest_dir: Path, *, expected_sha256: str,
                expected_size: int) -> Path:
    """Rebuild from ``base`` and ``patch`` into a new temp file in ``dest_dir``; its path."""
    zstandard = _zstd()

    try:
        base_size = base.stat().st_size
        if base_size > expected_size * MAX_BASE_RATIO:
            raise DownloadError(f"the installed build ({base_size} bytes) is much larger than "
                                f"the new one ({expected_size}): a patch would need too much "
                                "memory")
        with patch.open("rb") as f:
            head = f.read(_FRAME_HEADER_MAX)
        try:
            frame = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as exc:
            raise DownloadError(f"patch {patch.name} is not a zstd frame: {exc}") from exc
        first = frame.content_size
        bound = min(expected_size, SEGMENT)
        if not (0 < first <= bound or first == expected_size == 0):
            raise DownloadError(f"patch rebuilds {first} bytes in its first frame, not 1 to "
                                f"{bound} (a build of {expected_size})")
        cap = window_cap(base_size, first)
        if frame.window_size > cap:
            raise DownloadError(f"patch asks for a {frame.window_size} byte window (at most "
                                f"{cap})")
        dictionary = zstandard.ZstdCompressionDict(
            base.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    except OSError as exc:
        raise DownloadError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest_dir)
    except OSError as exc:
        raise HostError(f"cannot create a temporary file in {dest_dir}: "
                        f"{exc.strerror or exc}") from exc
    path = Path(name)
    try:
        try:
            digest = _decode(zstandard.ZstdDecompressor(dict_data=dictionary,
                                                        max_window_size=cap),
                             patch, fd, path, expected_size)
            if digest != expected_sha256.lower():
                raise ChecksumError(f"the build rebuilt from {patch.name} has sha256 {digest}, "
                                    f"expected {expected_sha256.lower()}")
            os.fsync(fd)
            set_mode(path, 0o755)
        finally:
            os.close(fd)
    except zstandard.ZstdError as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(f"patch {patch.name} cannot be applied: {exc}") from exc
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.info("rebuilt %d bytes from %s and the installed build", expected_size, patch.name)
    return path


def _decode(decompressor: zstandard.ZstdDecompressor, patch: Path, fd: int, path: Path,
            expected_size: int) -> str:
    hasher = hashlib.sha256()
    written = 0
    with patch.open("rb") as source, decompressor.stream_reader(
            source, read_size=1 << 16, read_across_frames=True) as reader:
        while chunk := reader.read(_CHUNK):
            written += len(chunk)
            if written > expected_size:
                raise DownloadError(f"patch {patch.name} rebuilds more than {expected_size} "
                                    "bytes")
            hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    if written != expected_size:
        raise DownloadError(f"patch {patch.name} rebuilds {written} bytes, not {expected_size}")
    return hasher.hexdigest()
