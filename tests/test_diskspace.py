"""The disk check before a download, on a real small filesystem (a tmpfs of a few MiB): a build
that does not fit beside ``agent`` and ``agent.old`` plus the margin is not downloaded at all;
the check fails with a ``host:`` error and is retried, and a build that fits then installs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Launcher, tmpfs_state
from hostile import (
    assert_untouched,
    files_in_bin,
    manifest_for,
    quick_args,
    sleeper,
    start,
    wait_committed,
)
from release_server import ReleaseServer, Route

from launcher import diskspace
from launcher.errors import HostError

pytestmark = pytest.mark.xdist_group("host-mounts")
MiB = 1 << 20


@pytest.fixture
def four_mib(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs_state(tmp_path, "4m")


def test_no_room_means_no_download_and_a_retry(four_mib: Path, tmp_path: Path,
                                                launcher: Callable[..., Launcher]) -> None:
    """A 3 MiB build on a 4 MiB disk with a 2 MiB margin: never requested, a ``host:`` error,
    bin/ untouched, checked again; with room made by a smaller build it installs."""
    (tmp_path / "big").mkdir()
    big = sleeper(tmp_path / "big", "0.2.0", pad=3 * MiB)
    small = sleeper(tmp_path, "0.2.1")
    with ReleaseServer() as srv:
        srv.publish("/bin/big", Route(body=big.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/big"),
                                                             big)))
        lch = launcher(four_mib)
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                    **{"--disk-margin": str(2 * MiB)}), "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "not enough disk space for 0.2.0")
        assert st["last_error"].startswith("host: not enough disk space for 0.2.0 in ")
        assert "margin of 2.0 MiB" in st["last_error"]
        lch.wait_state(lambda s: s.get("consecutive_failures", 0) >= 2, what="a retry")
        assert files_in_bin(lch) == ["agent"]
        assert not [r for r in srv.requests if r.path == "/bin/big"]
        assert st["bad"] == []
        srv.publish("/bin/small", Route(body=small.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.1", srv.url("/bin/small"),
                                                             small)))
        st = wait_committed(lch, "0.2.1")
        assert st["last_error"] is None
        assert lch.stop() == 0


def test_room_counts_the_margin(tmp_path: Path) -> None:
    """The build alone would fit; with the margin it does not."""
    free = diskspace.free_bytes(tmp_path)
    diskspace.require_room(tmp_path, free // 4, free // 4, "1.0")
    with pytest.raises(HostError, match=r"not enough disk space for 1\.0") as caught:
        diskspace.require_room(tmp_path, free // 2, free // 2 + MiB, "1.0")
    assert caught.value.describe().startswith("host: ")


def test_an_unannounced_size_is_estimated_from_the_running_build(tmp_path: Path) -> None:
    (tmp_path / "agent").write_bytes(b"x" * 1000)
    assert diskspace.build_size(None, tmp_path, 1 << 30) == 1000
    assert diskspace.build_size(5, tmp_path, 1 << 30) == 5
    assert diskspace.build_size(None, tmp_path / "none", 1 << 30) == 0
