"""Nothing lost on a bad disk: rollback only to another build, a bad mark that survives a
full disk or a torn journal, filesystems without hard links, a state dir that would not
survive a container restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    Launcher,
    UpdateServer,
    bind_over,
    fast_args,
    run_cli,
    script_agent,
    unavailable,
)

from launcher import container

SLEEP = "exec sleep 100000"

# Mounts on the host (tmpfs, bind, loop): one xdist worker runs them all, one at a time.
pytestmark = pytest.mark.xdist_group("host-mounts")


def quiet(server: UpdateServer, lch: Launcher, **over: str) -> list[str]:
    return fast_args(server, lch, **{"--health-url": "", "--health-window": "0.5", **over})


def test_rollback_refuses_when_agent_old_is_the_same_build(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A kill between the two steps of a swap leaves agent.old a link of agent: ``rollback``
    says there is nothing else to go back to, exits 3 and blocks nothing, live or offline."""
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", SLEEP))
    lch = launcher()
    lch.start(*quiet(server, lch), "--seed-binary",
              str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)), agent_args=(),
              env={"NGINX_MANAGER_FAULT_POINT": "swap.old_linked"})
    assert lch.proc is not None
    lch.proc.wait(30)
    bin_dir = lch.state_dir / "bin"
    assert (bin_dir / "agent").stat().st_ino == (bin_dir / "agent.old").stat().st_ino
    again = launcher(lch.state_dir).start(agent_args=())  # supervising only: no new update
    again.wait_log("supervising only")
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 3, out
    assert "nothing else to roll back to" in out.stderr
    st = again.state()
    assert st["bad"] == [] and st["current"]["version"] == "0.1.0"
    assert again.stop() == 0
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 3 and "nothing else to roll back to" in out.stderr
    status = json.loads(run_cli("status", "--json", "--state-dir", str(lch.state_dir)).stdout)
    assert status["bad_versions"] == [] and status["current_version"] == "0.1.0"


def test_rollback_refuses_when_the_previous_build_is_gone(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", SLEEP))
    lch = launcher()
    lch.start(*quiet(server, lch), "--seed-binary",
              str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)), agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    (lch.state_dir / "bin" / "agent.old").unlink()
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 3, out
    assert "agent.old is gone" in out.stderr
    assert lch.state()["bad"] == []
    assert lch.stop() == 0


@contextlib.contextmanager
def journal_read_only(state_dir: Path) -> Iterator[None]:
    """The state dir turns read-only (journal writes fail with EROFS) while ``bin/`` stays
    writable: a read-only bind mount of the state dir with ``bin/`` mounted rw on top."""
    try:
        bind_over(state_dir, read_only=True)
    except OSError as exc:
        unavailable(f"cannot bind-mount here: {exc}")
    try:
        bind_over(state_dir / "bin", read_only=False)
        yield
    finally:
        for target in (state_dir / "bin", state_dir):
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def test_a_bad_mark_that_could_not_be_written_is_rederived(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """The journal cannot be written during a trial; the build crashes and is rolled back
    (bin/ still takes the rename), but its bad mark is not on disk. After a power loss the
    next launcher derives the mark from the journal's phase and the files: never re-applied."""
    marker = tmp_path / "crash-now"
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1",
                                         f"while [ ! -e {marker} ]; do sleep 0.05; done; exit 1"))
    lch = launcher()
    args = quiet(server, lch, **{"--health-window": "60"})
    lch.start(*args, "--seed-binary", str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)),
              agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "trial", timeout=30, what="0.1.1 on trial")
    with journal_read_only(lch.state_dir):
        marker.touch()
        lch.wait_log("rolled back to 0.1.0")
        lch.wait_log("cannot write")
        lch.kill_tree()
    assert lch.state()["phase"] == "trial", "the test needs the bad mark unwritten"
    again = launcher(lch.state_dir).start(*args, agent_args=())
    again.wait_log("marking it bad")
    assert again.proc is not None
    pid = again.proc.pid
    # The journal as this launcher wrote it (the log line comes before its first write).
    st = again.wait_state(lambda s: s.get("launcher_pid") == pid
                          and (s.get("child") or {}).get("state") == "running",
                          what="the new launcher's journal")
    assert [b["version"] for b in st["bad"]] == ["0.1.1"]
    assert st["current"]["version"] == "0.1.0"
    assert "swapped in 0.1.1" not in again.log()
    assert again.stop() == 0


def test_a_torn_journal_after_a_rollback_loses_no_bad_mark(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """Power loss right after a rollback's rename, then state.json torn: the journal falls
    back to state.json.prev, from before the bad mark, and the mark is derived again."""
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", "exit 1"))
    lch = launcher()
    args = quiet(server, lch)
    lch.start(*args, "--seed-binary", str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)),
              agent_args=(), env={"NGINX_MANAGER_FAULT_POINT": "rollback.renamed"})
    assert lch.proc is not None
    lch.proc.wait(30)
    journal = lch.state_dir / "state.json"
    assert json.loads(journal.read_text())["phase"] == "rolling_back"
    journal.write_bytes(journal.read_bytes()[:40])  # torn below the filesystem
    again = launcher(lch.state_dir).start(*args, agent_args=())
    again.wait_log("recovered the journal from state.json.prev")
    assert again.proc is not None
    pid = again.proc.pid
    st = again.wait_state(lambda s: s.get("launcher_pid") == pid
                          and s.get("last_check_at") is not None, what="a check done")
    assert [b["version"] for b in st["bad"]] == ["0.1.1"]
    assert st["current"]["version"] == "0.1.0"
    assert again.stop() == 0


@pytest.fixture
def no_links_fs(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem without hard links or modes: exFAT through FUSE (``exfat-fuse``) on
    a loop device, as removable media and many FUSE mounts are."""
    mkfs, fuse = shutil.which("mkfs.exfat"), shutil.which("mount.exfat-fuse")
    if mkfs is None or fuse is None:
        unavailable("mkfs.exfat and mount.exfat-fuse (exfatprogs, exfat-fuse) are needed")
    image = tmp_path / "exfat.img"
    with image.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run([mkfs or "", str(image)], check=True, capture_output=True)
    target = tmp_path / "state"
    target.mkdir()
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          text=True, check=False)
    if loop.returncode != 0:
        unavailable(f"no loop device here: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        # umask=0077: modes are the mount's, and a state dir must be the launcher's alone.
        subprocess.run([fuse or "", "-o", "umask=0077", device, str(target)], check=True,
                       capture_output=True)
        probe = target / "probe"
        probe.write_text("x")
        with pytest.raises(PermissionError):
            (target / "probe-link").hardlink_to(probe)
        probe.unlink()
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def test_a_filesystem_without_hard_links_still_updates_and_rolls_back(
        no_links_fs: Path, server: UpdateServer, launcher: Callable[..., Launcher],
        tmp_path: Path) -> None:
    """No hard links: the journal's backup, agent.old and a rollback by copy, fsync and
    rename, with the same guarantees."""
    fs = no_links_fs
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", SLEEP))
    lch = launcher(fs)
    lch.start(*quiet(server, lch), "--seed-binary",
              str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)), agent_args=())
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and (s.get("current") or {}).get("version") == "0.1.1",
                        timeout=30, what="0.1.1 committed without hard links")
    assert st["previous"]["version"] == "0.1.0"
    assert (fs / "state.json.prev").exists()
    assert "cannot write" not in lch.log()
    assert lch.stop() == 0
    out = run_cli("rollback", "--state-dir", str(fs))
    assert out.returncode == 0, out
    again = launcher(fs).start(agent_args=())
    st = again.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    assert st["current"]["version"] == "0.1.0"
    assert again.stop() == 0


def test_container_mode_refuses_a_state_dir_on_the_root_filesystem(tmp_path: Path) -> None:
    """No volume at the state dir: every restart would bring back the image's build and
    swap again; the launcher says so and exits 2 instead of exiting 100 for ever."""
    candidates = [tmp_path, Path("/var/tmp"), Path("/root"), Path("/opt")]
    base = next((p for p in candidates if container.mount_point(p) == "/"), None)
    assert base is not None, f"none of {candidates} is on the root filesystem"
    state = Path(base) / f"nma-no-volume-{tmp_path.name}"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "run", "--mode", "container", "--state-dir",
             str(state), "--seed-binary", str(script_agent(tmp_path / "a", "1.0.0", SLEEP))],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert done.returncode == 2, done.stderr
    assert "root filesystem" in done.stderr and "volume" in done.stderr


def test_mount_point_reads_mountinfo(tmp_path: Path) -> None:
    """*unit*: the longest mount point above a path, escapes decoded."""
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
                    "30 22 0:5 / /var/lib/nginx\\040manager rw - tmpfs tmpfs rw\n")
    assert container.mount_point(Path("/var/lib/nginx manager/bin"), info) == \
        "/var/lib/nginx manager"
    assert container.mount_point(Path("/var/lib/nginx"), info) == "/"
    assert container.volume_problem(Path("/etc"), info) is not None
    assert container.volume_problem(Path("/var/lib/nginx manager"), info) is None


def test_a_rollback_that_cannot_rename_keeps_the_launcher_up(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """The whole state dir turns read-only during a trial, then the build crashes: the
    rollback cannot rename, and says so; the launcher does not die of it, and once the
    disk is writable again an operator's rollback goes through."""
    marker = tmp_path / "crash-now"
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1",
                                         f"[ -e {marker} ] && exit 1\n{SLEEP}"))
    lch = launcher()
    lch.start(*quiet(server, lch, **{"--health-window": "60"}), "--seed-binary",
              str(script_agent(tmp_path / "a0", "0.1.0", SLEEP)), agent_args=())
    st = lch.wait_state(lambda s: s.get("phase") == "trial"
                        and (s.get("child") or {}).get("version") == "0.1.1"
                        and (s.get("child") or {}).get("state") == "running",
                        timeout=30, what="0.1.1 running on trial")
    try:
        bind_over(lch.state_dir, read_only=True)
    except OSError as exc:
        unavailable(f"cannot bind-mount here: {exc}")
    try:
        marker.touch()
        os.kill(st["child"]["pid"], signal.SIGTERM)
        lch.wait_log("cannot roll back from 0.1.1")
        lch.wait_log(r"restarting agent 0\.1\.1 in")
        assert lch.proc is not None and lch.proc.poll() is None
    finally:
        subprocess.run(["umount", "-l", str(lch.state_dir)], check=False, capture_output=True)
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    assert out.returncode == 0, out
    lch.wait_state(lambda s: (s.get("child") or {}).get("version") == "0.1.0"
                   and (s.get("child") or {}).get("state") == "running", what="0.1.0 back")
    assert lch.stop() == 0
