"""Delta updates: the patch is used only from its base, checked, and every failure falls back
to the full download (real loopback server, the worker's own staging, a real launcher)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import release_tool
import zstandard
from conftest import Launcher, UpdateServer, fast_args
from hostile import sleeper
from range_server import RangeServer
from release_deltas import make_patch
from release_server import ReleaseServer, Route

from launcher import delta, worker
from launcher.errors import ChecksumError, DownloadError
from launcher.manifest import parse_manifest
from launcher.settings import Settings

PAD = 64 << 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    """Two script agents that share most of their bytes, as consecutive builds do."""
    return sleeper(tmp_path / "old", "0.1.0", PAD), sleeper(tmp_path / "new", "0.2.0", PAD)


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    for name in ("old", "new", "state/bin"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)


def test_apply_rebuilds_the_new_build(builds: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = builds
    patch = tmp_path / "p.zst"
    patch.write_bytes(make_patch(old, new))
    assert patch.stat().st_size < new.stat().st_size // 20
    out = delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(new.read_bytes()),
                            expected_size=new.stat().st_size)
    assert out.read_bytes() == new.read_bytes() and out.stat().st_mode & 0o111


def test_apply_uses_the_cffi_backend_and_falls_back_to_the_c_one(
        builds: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The cffi backend refers to the installed build's bytes where the C backend copies
    them (bench/delta.py measures the memory): it is the one used. Without it a patch still
    applies, with a warning that it costs the build's size again."""
    assert delta._zstd().__name__ == "zstandard.backend_cffi"
    old, new = builds
    patch = tmp_path / "p.zst"
    patch.write_bytes(make_patch(old, new))
    monkeypatch.setitem(sys.modules, "zstandard.backend_cffi", None)  # import fails
    assert delta._zstd() is zstandard
    with caplog.at_level(logging.WARNING, logger="launcher.delta"):
        out = delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(new.read_bytes()),
                                expected_size=new.stat().st_size)
    assert out.read_bytes() == new.read_bytes()
    assert "cffi backend is not available" in caplog.text


def test_apply_refuses_what_does_not_rebuild_the_signed_build(builds: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    old, new = builds
    data = new.read_bytes()
    patch = tmp_path / "p.zst"
    good = make_patch(old, new)
    other = tmp_path / "other"
    other.write_bytes(bytes(len(old.read_bytes())))
    cases: list[tuple[bytes, Path, int, type[Exception], str]] = [
        (b"not a zstd frame at all", old, len(data), DownloadError, "not a zstd frame"),
        (good[: len(good) // 2], old, len(data), DownloadError,
         "not a zstd frame|cannot be applied|rebuilds"),
        (good, old, len(data) + 1, DownloadError,
         f"rebuilds {len(data)} bytes, not {len(data) + 1}"),
        (good, other, len(data), ChecksumError, "has sha256"),  # another base
        (zstandard.ZstdCompressor(level=1).compress(data), old, len(data) - 1, DownloadError,
         "patch rebuilds"),
    ]
    for body, base, size, error, message in cases:
        patch.write_bytes(body)
        with pytest.raises(error, match=message):
            delta.apply_patch(base, patch, tmp_path, expected_sha256=sha(data),
                              expected_size=size)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".agent")) == []


def test_apply_refuses_a_window_beyond_its_memory_bound(builds: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """A frame header that asks for a 1 GiB window is refused before anything is decoded."""
    old, new = builds
    data = new.read_bytes()
    header = (b"\x28\xb5\x2f\xfd"  # zstd magic
              + bytes([0xC0])  # 8-byte content size, not single-segment: a window follows
              + bytes([20 << 3])  # window 2^(10+20)
              + len(data).to_bytes(8, "little"))
    patch = tmp_path / "p.zst"
    patch.write_bytes(header + b"\0" * 64)
    with pytest.raises(DownloadError, match="asks for a 1073741824 byte window"):
        delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(data),
                          expected_size=len(data))



def test_the_decoder_itself_refuses_a_later_frame_beyond_the_window(
        builds: tuple[Path, Path], tmp_path: Path) -> None:
    """Only the first frame's header is read before decoding: a skippable frame there passes
    that check, and the next frame (no content size, a 128 MiB window) must be refused by
    the decoder's own limit, in the backend the launcher uses."""
    old, new = builds
    data = new.read_bytes()
    params = zstandard.ZstdCompressionParameters.from_level(1, write_content_size=False)
    frame = bytearray(zstandard.ZstdCompressor(compression_params=params).compress(data))
    assert frame[4] == 0  # no content size, not single-segment: a window byte follows
    frame[5] = 17 << 3  # window 2^(10+17)
    skippable = b"\x50\x2a\x4d\x18" + len(data).to_bytes(4, "little") + bytes(len(data))
    patch = tmp_path / "p.zst"
    patch.write_bytes(skippable + bytes(frame))
    with pytest.raises(DownloadError, match="too much memory"):
        delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(data),
                          expected_size=len(data))

class Release:
    """A manifest with one delta, served by a real loopback server."""

    def __init__(self, srv: ReleaseServer, old: Path, new: Path, *,
                 patch: bytes | None = None, signed_patch: bytes | None = None) -> None:
        self.srv = srv
        self.new = new.read_bytes()
        self.patch = make_patch(old, new) if patch is None else patch
        entry: dict[str, Any] = {"url": srv.url("/bin/agent"), "sha256": sha(self.new),
                                 "size": len(self.new)}
        listed = self.patch if signed_patch is None else signed_patch
        entry["deltas"] = [{"from_sha256": sha(old.read_bytes()), "url": srv.url("/bin/patch"),
                            "sha256": sha(listed), "size": len(listed),
                            "format": delta.FORMAT}]
        self.manifest = {"version": "0.2.0", "binaries": {"linux-amd64": entry}}
        srv.publish("/version.json", Route(body=json.dumps(self.manifest).encode()))
        srv.publish("/bin/agent", Route(body=self.new))
        srv.publish("/bin/patch", Route(body=self.patch))

    def paths(self) -> list[str]:
        return [r.path for r in self.srv.requests]


def stage(srv: ReleaseServer, state_dir: Path, installed: Path | None,
          **settings: Any) -> worker.Result:
    if installed is not None:
        (state_dir / "bin" / "agent").write_bytes(installed.read_bytes())
    s = Settings(manifest_url=srv.url("/version.json"), platform="linux-amd64",
                 state_dir=state_dir, allow_http=True, allow_unsigned=True,
                 **settings).for_worker()
    current = {"version": "0.1.0", "sha256": "0" * 64} if installed else None
    return worker.run_check({"settings": s, "current": current, "bad": [], "host_id": "h",
                             "stage": True})


def staged_bytes(result: worker.Result, state_dir: Path) -> bytes:
    assert result.outcome == "staged", result
    assert result.file is not None
    return (state_dir / "bin" / result.file).read_bytes()


def test_the_worker_rebuilds_from_the_patch(builds: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = builds
    with ReleaseServer() as srv:
        release = Release(srv, old, new)
        result = stage(srv, tmp_path / "state", old)
    assert staged_bytes(result, tmp_path / "state") == release.new
    assert release.paths() == ["/version.json", "/bin/patch"]  # never the full build


@pytest.mark.parametrize("case", ["corrupt", "wrong_sha", "no_base", "other_base", "bigger"])
def test_every_failure_falls_back_to_the_full_download(
        case: str, builds: tuple[Path, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    old, new = builds
    installed: Path | None = old
    options: dict[str, Any] = {}
    if case == "corrupt":  # signed as it is, but it does not rebuild the build
        options["patch"] = make_patch(new, new)
    elif case == "wrong_sha":  # the bytes served are not the ones signed
        options["signed_patch"] = make_patch(new, new)
    elif case == "no_base":
        installed = None
    elif case == "other_base":
        installed = new
    elif case == "bigger":
        options["patch"] = new.read_bytes() + b"x"
    caplog.set_level(logging.INFO)
    with ReleaseServer() as srv:
        release = Release(srv, old, new, **options)
        result = stage(srv, tmp_path / "state", installed)
    assert staged_bytes(result, tmp_path / "state") == release.new
    used_patch = case in ("corrupt", "wrong_sha")
    assert release.paths() == ["/version.json", *(["/bin/patch"] if used_patch else []),
                               "/bin/agent"]
    if used_patch:
        assert "downloading the full build" in caplog.text
    leftovers = {p.name for p in (tmp_path / "state" / "bin").iterdir()}
    assert leftovers == ({"agent", result.file} if installed else {result.file})


def test_the_release_tool_publishes_deltas_and_a_launcher_uses_them(
        server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path) -> None:
    server.publish("0.1.0", build("0.1.0"))
    lch = launcher()
    lch.start(*fast_args(server, lch))
    lch.wait_healthy("0.1.0")
    lch.wait_state(lambda s: s.get("phase") == "committed")
    manifest = release_tool.publish("0.2.0", server.dir, server.base_url,
                                    binary=build("0.2.0"), delta_from=["0.1.0"])
    entry = manifest["binaries"]["linux-amd64"]
    (listed,) = entry["deltas"]
    assert listed["from_sha256"] == hashlib.sha256(build("0.1.0").read_bytes()).hexdigest()
    assert listed["size"] < entry["size"] // 10
    assert listed["url"].endswith("/bin/0.2.0/agent-linux-amd64.from-0.1.0.zst")
    parse_manifest((server.dir / "version.json").read_bytes())  # the launcher's own model
    lch.wait_healthy("0.2.0")
    lch.wait_log(r"rebuilt 0\.2\.0 from a \d+ byte patch")
    assert lch.stop() == 0


def test_the_release_tool_refuses_a_base_it_cannot_find(tmp_path: Path,
                                                        build: Callable[[str], Path]) -> None:
    code = release_tool.main(["0.2.0", "--binary", str(build("0.2.0")), "--release-dir",
                              str(tmp_path / "r"), "--delta-from", "0.1.9"])
    assert code == 2
    assert not (tmp_path / "r" / "version.json").exists()


def test_a_build_of_several_segments_rebuilds(builds: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Big builds are patched one segment per frame (the memory bound); small segments here
    so the build spans five of them."""
    import release_deltas

    monkeypatch.setattr(release_deltas, "SEGMENT", 16 << 10)
    monkeypatch.setattr(delta, "SEGMENT", 16 << 10)
    old, new = builds
    patch = tmp_path / "p.zst"
    patch.write_bytes(make_patch(old, new))
    data = new.read_bytes()
    out = delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(data),
                            expected_size=len(data))
    assert out.read_bytes() == data
    monkeypatch.setattr(delta, "SEGMENT", 8 << 10)  # a launcher holding less than a segment
    with pytest.raises(DownloadError, match="first frame"):
        delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(data),
                          expected_size=len(data))


def test_segments_are_a_quarter_of_the_build_from_64_kib_to_4_mib(tmp_path: Path) -> None:
    """The decoder holds one segment beside the old build: a quarter of the build keeps a
    3 MB build's patch within twice its size, and big builds keep 4 MiB frames."""
    import release_deltas

    assert [release_deltas.segment_size(n) for n in (1000, 1 << 20, 3 << 20, 64 << 20)] == \
        [64 << 10, 256 << 10, 768 << 10, 4 << 20]
    old, new = (sleeper(tmp_path / d, v, 3 << 20) for d, v in (("old", "0.1.0"),
                                                              ("new", "0.2.0")))
    data = new.read_bytes()
    patch = tmp_path / "p.zst"
    patch.write_bytes(make_patch(old, new))
    frame = zstandard.get_frame_parameters(patch.read_bytes()[:18])
    assert frame.content_size == len(data) // 4
    out = delta.apply_patch(old, patch, tmp_path, expected_sha256=sha(data),
                            expected_size=len(data))
    assert out.read_bytes() == data


def test_a_slow_patch_leaves_the_full_download_its_share_of_the_deadline(
        builds: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = builds
    caplog.set_level(logging.INFO)
    with ReleaseServer() as srv:
        release = Release(srv, old, new)
        srv.publish("/bin/patch", Route(body=release.patch, behaviour="trickle",
                                        chunk_bytes=1, interval_s=0.05))
        result = stage(srv, tmp_path / "state", old, download_deadline_s=2.0)
    assert staged_bytes(result, tmp_path / "state") == release.new
    assert "exceeded its deadline of 1s" in caplog.text
    assert release.paths() == ["/version.json", "/bin/patch", "/bin/agent"]


def random_agent(path: Path, version: str, tail: bytes) -> Path:
    """A script agent followed by ``tail`` (after ``exit``, never read)."""
    sleeper(path.parent, version).rename(path)
    with path.open("ab") as file:
        file.write(b"exit 0\n" + tail)
    return path


def test_a_slow_link_stages_a_build_whose_patch_is_listed(tmp_path: Path) -> None:
    """A link too slow for either file within one check: the patch's and the full build's
    partials survive each other, so the full build resumes (Range) and stages in a few
    checks instead of restarting both from byte 0 every check."""
    tail = random.randbytes(300_000)  # incompressible; half of it changes
    old = random_agent(tmp_path / "old" / "agent", "0.1.0", tail)
    new = random_agent(tmp_path / "new" / "agent", "0.2.0",
                       tail[:150_000] + random.randbytes(150_000))
    patch = make_patch(old, new)
    assert 100_000 < len(patch) < new.stat().st_size
    state = tmp_path / "state"
    (state / "bin" / "agent").write_bytes(old.read_bytes())
    with RangeServer(patch) as patch_server, RangeServer(new) as full_server:
        patch_server.rate_bps, full_server.rate_bps = 5_000, 150_000
        entry = {"url": full_server.url(), "sha256": sha(new.read_bytes()),
                 "size": new.stat().st_size,
                 "deltas": [{"from_sha256": sha(old.read_bytes()), "sha256": sha(patch),
                             "url": patch_server.url("/bin/patch"), "size": len(patch),
                             "format": delta.FORMAT}]}
        body = json.dumps({"version": "0.2.0", "binaries": {"linux-amd64": entry}}).encode()
        with RangeServer(body) as manifest_server:
            s = Settings(manifest_url=manifest_server.url("/version.json"),
                         platform="linux-amd64", state_dir=state, allow_http=True,
                         allow_unsigned=True, download_deadline_s=2.0,
                         min_speed_bps=1.0).for_worker()
            outcomes = []
            for _ in range(6):
                result = worker.run_check({"settings": s, "current": {"version": "0.1.0"},
                                           "bad": [], "host_id": "h", "stage": True})
                outcomes.append(result.outcome)
                if result.outcome == "staged":
                    break
    assert outcomes[-1] == "staged", outcomes
    assert staged_bytes(result, state) == new.read_bytes()
    later = full_server.requests[1:]
    assert later and all(r.range is not None and r.range != "bytes=0-" for r in later), \
        full_server.requests
    assert all(r.range for r in patch_server.requests[1:]), patch_server.requests
    assert {p.name for p in (state / "bin").iterdir()} == {"agent", result.file}
