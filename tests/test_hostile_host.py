"""A hostile host: a full disk, a read-only state dir, the binary deleted or replaced under
the launcher, the wall clock jumping. The running agent is kept, the launcher stays up, and
once the host is sane again the update goes through.

The disk tests mount a small tmpfs as the state directory (root only; skipped otherwise).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, Launcher, bind_over, mount, unavailable, wait_until
from hostile import (
    agent_pid,
    assert_untouched,
    files_in_bin,
    manifest_for,
    quick_args,
    sha,
    sleeper,
    start,
    wait_committed,
)
from release_server import ReleaseServer, Route

# Mounts on the host (tmpfs, bind, loop): one xdist worker runs them all, one at a time.
pytestmark = pytest.mark.xdist_group("host-mounts")


def test_disk_full_during_download(small_fs: Path, launcher: Callable[..., Launcher],
                                   tmp_path: Path) -> None:
    """A build larger than the free space: a clear host error, the partial file removed, the
    agent untouched and not marked bad; a build that fits then installs."""
    (tmp_path / "big").mkdir()
    big = sleeper(tmp_path / "big", "0.2.0", pad=2 << 20)
    small = sleeper(tmp_path, "0.2.1")
    with ReleaseServer() as srv:
        srv.publish("/bin/big", Route(body=big.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/big"),
                                                             big, size=False)))
        lch = launcher(small_fs)
        # No margin: the build's size is unknown, so the download itself must hit the wall.
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                                    **{"--disk-margin": "1"}), "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "No space left on device")
        assert st["last_error"].startswith("host:")
        assert files_in_bin(lch) == ["agent"]
        srv.publish("/bin/small", Route(body=small.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.1", srv.url("/bin/small"),
                                                             small)))
        wait_committed(lch, "0.2.1")
        assert lch.stop() == 0


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` becomes read-only for every new lookup (a read-only bind mount over itself),
    even while a process holds files in it open for writing, as a remount would not allow."""
    try:
        bind_over(path, read_only=True)
    except OSError as exc:
        unavailable(f"cannot bind-mount here: {exc}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def test_state_dir_turns_read_only_while_running(launcher: Callable[..., Launcher],
                                                 tmp_path: Path) -> None:
    """The state dir turns read-only: the agent keeps running under a launcher that stays
    up, and once it is writable again the pending update goes through."""
    new = sleeper(tmp_path, "0.2.0")
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(status=404))
        lch = launcher()
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0")),
                    "0.1.0")
        with read_only(lch.state_dir):
            srv.publish("/bin/agent", Route(body=new.read_bytes()))
            srv.publish("/version.json", Route(body=manifest_for(
                "0.2.0", srv.url("/bin/agent"), new)))
            lch.wait_log("Read-only file system")
            n = len(srv.requests)
            wait_until(lambda: len(srv.requests) >= n + 2, 10, "checks while read-only")
            assert lch.proc is not None and lch.proc.poll() is None, (
                f"launcher exited {lch.proc.returncode}:\n{lch.log()[-3000:]}")
            assert psutil.pid_exists(pid)
            assert files_in_bin(lch) == ["agent"]
        wait_committed(lch, "0.2.0")
        assert lch.stop() == 0


def test_read_only_state_dir_at_start_runs_the_agent(small_fs: Path,
                                                     launcher: Callable[..., Launcher],
                                                     tmp_path: Path) -> None:
    """Started on a read-only state dir holding an installed agent, the launcher runs it,
    says in one line that the journal cannot be written, and stops cleanly."""
    lch = launcher(small_fs)
    args = quick_args("http://127.0.0.1:9/version.json", sleeper(tmp_path, "0.1.0"))
    start(lch, args, "0.1.0")
    assert lch.stop() == 0
    mount("-o", "remount,ro", str(small_fs))
    try:
        lch.start(*args, agent_args=())
        lch.wait_log("started agent 0.1.0", count=2)
        assert "Traceback" not in lch.log()
        assert "Read-only file system" in lch.log()
        assert lch.stop() == 0
    finally:
        mount("-o", "remount,rw", str(small_fs))


def test_binary_deleted_then_agent_dies(launcher: Callable[..., Launcher],
                                        tmp_path: Path) -> None:
    """bin/agent is deleted under a running launcher and then the agent dies: the launcher
    gets an agent running again without being restarted."""
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(status=404))
        lch = launcher()
        pid = start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0")),
                    "0.1.0")
        (lch.state_dir / "bin" / "agent").unlink()
        psutil.Process(pid).kill()
        wait_until((lch.state_dir / "bin" / "agent").exists, 5,
                   "bin/agent restored")
        assert agent_pid(lch, "0.1.0") != pid


def test_binary_deleted_is_repaired_on_restart(launcher: Callable[..., Launcher],
                                               tmp_path: Path) -> None:
    """bin/agent gone while the launcher is down: the next start reinstalls from the source
    (or restores agent.old) and the journal agrees with the files."""
    new = sleeper(tmp_path, "0.2.0")
    with ReleaseServer() as srv:
        srv.publish("/bin/agent", Route(body=new.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/agent"),
                                                             new)))
        lch = launcher()
        args = quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"))
        args = args[: args.index("--seed-binary")]  # no seed: the source is the only origin
        lch.start(*args, agent_args=())
        wait_committed(lch, "0.2.0")
        assert lch.stop() == 0
        (lch.state_dir / "bin" / "agent").unlink()
        lch.start(*args, agent_args=())
        st = wait_committed(lch, "0.2.0")
        assert st["current"]["sha256"] == sha(lch.state_dir / "bin" / "agent")
        assert lch.stop() == 0


@pytest.mark.parametrize("replacement", [
    "another build",
    "garbage",
])
def test_binary_replaced_while_down(replacement: str, launcher: Callable[..., Launcher],
                                    tmp_path: Path) -> None:
    """bin/agent replaced behind the launcher's back: on restart the journal follows the
    file (a working build is learned by ``--version``; garbage is replaced by the source's
    release), and an agent runs."""
    release = sleeper(tmp_path, "0.3.0")
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(status=404))
        lch = launcher()
        args = quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"))
        start(lch, args, "0.1.0")
        assert lch.stop() == 0
        agent = lch.state_dir / "bin" / "agent"
        if replacement == "another build":
            agent.write_bytes(sleeper(tmp_path, "0.2.0").read_bytes())
            expect = "0.2.0"
        else:
            agent.write_bytes(b"\x7fELF garbage")
            srv.publish("/bin/agent", Route(body=release.read_bytes()))
            srv.publish("/version.json", Route(body=manifest_for(
                "0.3.0", srv.url("/bin/agent"), release)))
            expect = "0.3.0"
        args_no_seed = args[: args.index("--seed-binary")]
        lch.start(*args_no_seed, agent_args=())
        st = wait_committed(lch, expect, timeout=8)
        assert st["current"]["sha256"] == sha(agent)
        assert lch.stop() == 0


CLOCK_DRIVER = """
import itertools, logging, sys, time
from pathlib import Path
from launcher import settings
from launcher.cli import setup_logging
from launcher.supervisor import Supervisor

offsets = itertools.cycle([0.0, 10 * 365 * 86400.0, -10 * 365 * 86400.0, 3600.0])
setup_logging()
s = settings.load({"state_dir": sys.argv[1], "manifest_url": sys.argv[2], "allow_http": True,
                   "allow_unsigned": True,
                   "poll_interval": "0.2", "jitter": "0", "health_window": "1.0",
                   "seed_binary": sys.argv[3], "platform": "linux-amd64", "stop_grace": "2"})
sys.exit(Supervisor(s, wall=lambda: time.time() + next(offsets)).run())
"""


def test_wall_clock_jumping_changes_no_timing(launcher: Callable[..., Launcher],
                                              tmp_path: Path) -> None:
    """A wall clock leaping ±10 years between readings: the trial still lasts its health
    window (counted in the child's own run time), commits once, and polls keep their pace."""
    new = sleeper(tmp_path, "0.2.0")
    with ReleaseServer() as srv:
        srv.publish("/bin/agent", Route(body=new.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/agent"),
                                                             new)))
        state = tmp_path / "state"
        log = tmp_path / "clock.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", CLOCK_DRIVER, str(state), srv.url("/version.json"),
                 str(sleeper(tmp_path, "0.1.0"))], cwd=ROOT, stderr=out, stdout=out,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        try:
            lch = launcher(state)
            lch.log_path = log
            lch.proc = proc
            wait_committed(lch, "0.2.0")
            # The journal is written before the line is logged: wait for the line too.
            text = lch.wait_log("committed after")
            trial = [line for line in text.splitlines() if "committed after" in line]
            assert len(trial) == 1, text
            took = float(trial[0].rsplit("after ", 1)[1].split("s")[0])
            assert 1.0 <= took < 3.0, trial[0]
            n = len(srv.requests)
            # A clock jump that stalled polling would stall it for years: 20 s is
            # generous for three polls on a loaded machine and still catches that.
            wait_until(lambda: len(srv.requests) >= n + 3, 20, "three polls at 0.2s pace")
            assert proc.poll() is None
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
