"""Patches from earlier builds to a new one, for the manifest's ``binaries.<platform>.deltas``.

The format, ``zstd-patch``, is what ``launcher/delta.py`` applies: the new build in 4 MiB
segments, each one zstd frame compressed with the whole old build as a raw-content
dictionary (``zstd --patch-from``, per segment), level 19 with long-distance matching and a
window covering the old build and one segment. The segments cost a few hundred bytes of
patch and keep the launcher's memory at the old build plus one segment. A patch that is not
smaller than the build is not published. Needs ``zstandard`` (a dependency of the launcher).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "zstd-patch"  # launcher.delta.FORMAT
LEVEL = 19
SEGMENT = 4 << 20  # launcher.delta.SEGMENT


def make_patch(base: Path, new: Path, level: int = LEVEL) -> bytes:
    """The patch that rebuilds ``new`` from ``base``: one frame per ``SEGMENT`` of ``new``,
    each with all of ``base`` as its dictionary, so a decoder's buffer is one segment."""
    import zstandard

    old, data = base.read_bytes(), new.read_bytes()
    window_log = min(31, max(10, (len(old) + min(len(data), SEGMENT)).bit_length()))
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frames = []
    for start in range(0, max(len(data), 1), SEGMENT):
        part = data[start : start + SEGMENT]
        params = zstandard.ZstdCompressionParameters.from_level(
            level, source_size=len(part), window_log=window_log, enable_ldm=True,
            write_content_size=True, write_checksum=False)
        frames.append(zstandard.ZstdCompressor(dict_data=dictionary,
                                               compression_params=params).compress(part))
    return b"".join(frames)


def patch_entry(url: str, base_sha256: str, patch: bytes) -> dict[str, object]:
    return {"from_sha256": base_sha256, "url": url,
            "sha256": hashlib.sha256(patch).hexdigest(), "size": len(patch), "format": FORMAT}
