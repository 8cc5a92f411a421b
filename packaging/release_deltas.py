"""Patches from earlier builds to a new one, for the manifest's ``binaries.<platform>.deltas``.

The format, ``zstd-patch``, is what ``launcher/delta.py`` applies: the new build in segments
(a quarter of the build, from 64 KiB to 4 MiB: :func:`segment_size`), each one zstd frame
compressed with the whole old build as a raw-content dictionary (``zstd --patch-from``, per
segment), level 19 with long-distance matching and a window covering the old build and one
segment. The segments cost a few hundred bytes of patch and keep the launcher's memory at
the old build plus one segment, within twice the build for a build of a few MB. A patch
that is not smaller than the build is not published. Needs ``zstandard`` (a dependency of
the launcher).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "zstd-patch"  # launcher.delta.FORMAT
LEVEL = 19
SEGMENT = 4 << 20  # the largest segment: launcher.delta.SEGMENT
MIN_SEGMENT = 64 << 10


def segment_size(size: int) -> int:
    """The new build's bytes per frame: a quarter of it, from MIN_SEGMENT to SEGMENT."""
    return min(SEGMENT, max(MIN_SEGMENT, size // 4))


def make_patch(base: Path, new: Path, level: int = LEVEL) -> bytes:
    """The patch that rebuilds ``new`` from ``base``: one frame per segment of ``new``,
    each with all of ``base`` as its dictionary, so a decoder's buffer is one segment."""
    import zstandard

    old, data = base.read_bytes(), new.read_bytes()
    segment = segment_size(len(data))
    window_log = min(31, max(10, (len(old) + min(len(data), segment)).bit_length()))
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frames = []
    for start in range(0, max(len(data), 1), segment):
        part = data[start : start + segment]
        params = zstandard.ZstdCompressionParameters.from_level(
            level, source_size=len(part), window_log=window_log, enable_ldm=True,
            write_content_size=True, write_checksum=False)
        frames.append(zstandard.ZstdCompressor(dict_data=dictionary,
                                               compression_params=params).compress(part))
    return b"".join(frames)


def patch_entry(url: str, base_sha256: str, patch: bytes) -> dict[str, object]:
    return {"from_sha256": base_sha256, "url": url,
            "sha256": hashlib.sha256(patch).hexdigest(), "size": len(patch), "format": FORMAT}
