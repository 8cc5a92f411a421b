"""Every patch the release tool makes applies, whatever the sizes: builds around the segment
bounds (64 KiB, a quarter of the build, 4 MiB), an empty build, an empty base, a base much
smaller or larger than the build, and patches of the previous release tool (fixed 4 MiB
frames). Level 1 keeps them fast: the framing and the window do not depend on the level."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import release_deltas
import zstandard
from release_deltas import make_patch

from launcher import delta
from launcher.errors import DownloadError

K, M = 1 << 10, 1 << 20
SIZES = [0, 1, 64 * K - 1, 64 * K, 64 * K + 1, 256 * K - 1, 256 * K + 1, M + 3,
         16 * M - 1, 16 * M + 1]
BASES = ["similar", "empty", "tenth", "larger"]  # larger: 1.4x, within MAX_BASE_RATIO


def builds(tmp_path: Path, size: int, kind: str) -> tuple[Path, bytes]:
    rnd = random.Random(size)
    data = rnd.randbytes(size)
    old = {"similar": data[: size // 2] + rnd.randbytes(100) + data[size // 2 + 50:],
           "empty": b"", "tenth": data[: size // 10],
           "larger": data + rnd.randbytes(size * 2 // 5)}[kind]
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(data)
    return tmp_path / "old", data


def apply(tmp_path: Path, base: Path, data: bytes) -> bytes:
    out = delta.apply_patch(base, tmp_path / "p.zst", tmp_path,
                            expected_sha256=hashlib.sha256(data).hexdigest(),
                            expected_size=len(data))
    rebuilt = out.read_bytes()
    out.unlink()
    return rebuilt


@pytest.mark.parametrize("kind", BASES)
@pytest.mark.parametrize("size", SIZES)
def test_every_patch_the_release_tool_makes_applies(tmp_path: Path, size: int,
                                                    kind: str) -> None:
    base, data = builds(tmp_path, size, kind)
    (tmp_path / "p.zst").write_bytes(make_patch(base, tmp_path / "new", level=1))
    if base.stat().st_size > size * delta.MAX_BASE_RATIO:  # "similar" to a 0- or 1-byte build
        with pytest.raises(DownloadError, match="much larger than the new one"):
            apply(tmp_path, base, data)  # refused by design: too much memory for the build
        return
    assert apply(tmp_path, base, data) == data


@pytest.mark.parametrize("size", [3 * M, 4 * M - 1, 4 * M + 1, 16 * M + 1])
def test_a_patch_of_the_previous_release_tool_applies(tmp_path: Path, size: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous tool cut every build into fixed 4 MiB frames."""
    monkeypatch.setattr(release_deltas, "segment_size", lambda n: release_deltas.SEGMENT)
    base, data = builds(tmp_path, size, "similar")
    (tmp_path / "p.zst").write_bytes(make_patch(base, tmp_path / "new", level=1))
    first = zstandard.get_frame_parameters((tmp_path / "p.zst").read_bytes()[:18])
    assert first.content_size == min(size, 4 * M)
    assert apply(tmp_path, base, data) == data


def test_a_tiny_first_frame_does_not_open_a_bigger_window_later(tmp_path: Path) -> None:
    """A 1-byte first frame passes the header check; the window cap it yields is then held
    against every later frame, so a 1 MiB frame behind it is refused by the decoder."""
    base, data = builds(tmp_path, M, "tenth")
    dictionary = zstandard.ZstdCompressionDict(base.read_bytes(),
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=21,
                                                            write_content_size=True)
    cctx = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)
    (tmp_path / "p.zst").write_bytes(cctx.compress(data[:1]) + cctx.compress(data[1:]))
    assert delta.window_cap(base.stat().st_size, 1) < len(data) - 1
    with pytest.raises(DownloadError, match="too much memory"):
        apply(tmp_path, base, data)
