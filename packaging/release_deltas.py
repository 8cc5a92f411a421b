"""Patches from earlier builds to a new one, for the manifest's ``binaries.<platform>.deltas``.

The format, ``zstd-patch``, is what ``launcher/delta.py`` applies: one zstd frame of the new
build compressed with the old build as a raw-content dictionary (``zstd --patch-from``),
level 19 with long-distance matching and a window covering both builds, so the launcher can
bound the memory it grants a patch. A patch that is not smaller than the build is not
published. Needs ``zstandard`` (a dependency of the launcher).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "zstd-patch"  # launcher.delta.FORMAT
LEVEL = 19


def make_patch(base: Path, new: Path, level: int = LEVEL) -> bytes:
    """The patch that rebuilds ``new`` from ``base``."""
    import zstandard

    old, data = base.read_bytes(), new.read_bytes()
    window_log = min(31, max(10, (len(old) + len(data)).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(data), window_log=window_log, enable_ldm=True,
        write_content_size=True, write_checksum=False)
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary,
                                    compression_params=params).compress(data)


def patch_entry(url: str, base_sha256: str, patch: bytes) -> dict[str, object]:
    return {"from_sha256": base_sha256, "url": url,
            "sha256": hashlib.sha256(patch).hexdigest(), "size": len(patch), "format": FORMAT}
