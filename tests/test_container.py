"""Container mode under a stand-in kubelet: every start is a fresh PID namespace over a
persistent volume directory; every exit is followed by a restart (restartPolicy Always).

The story of one pod: seed from the image → update → exit 100 → the new build runs and
commits → a crashing build → exit 100 → rolled back in place, without a second exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest
from conftest import (
    ROOT,
    Launcher,
    UpdateServer,
    fast_args,
    script_agent,
    unavailable,
    wait_until,
)


def on_volume(volume: Path, *cmd: str) -> list[str]:
    """``cmd`` with ``volume`` mounted as a volume is in a pod: its own mount (a bind mount
    onto itself), in the mount namespace the caller made (``unshare --mount``)."""
    volume.mkdir(parents=True, exist_ok=True)
    return ["sh", "-c", 'v=$1; shift; mount --bind "$v" "$v" && exec "$@"', "sh", str(volume),
            *cmd]


class Kubelet:
    """Restarts the launcher container on every exit, with a scaled-down back-off."""

    def __init__(self, volume: Path, args: list[str], log_path: Path) -> None:
        unshare = shutil.which("unshare")
        ok = unshare and subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                                        capture_output=True, check=False).returncode == 0
        if not ok:
            unavailable("unshare --pid is needed for the container tests")
        self.unshare = unshare or "unshare"
        self.volume = volume
        self.args = args
        self.log_path = log_path
        self.exits: list[int] = []
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.deleting = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Kubelet:
        self.thread.start()
        return self

    def _loop(self) -> None:
        backoff = 0.05
        while not self.deleting.is_set():
            layer = self.volume.parent / f"layer{self.starts}"  # a fresh writable layer
            layer.mkdir()
            env = {**os.environ, "KUBERNETES_SERVICE_HOST": "10.0.0.1", "TMPDIR": str(layer),
                   "PYTHONUNBUFFERED": "1"}
            with self.log_path.open("ab") as log, self.lock:
                self.proc = subprocess.Popen(
                    [self.unshare, "--pid", "--fork", "--mount-proc", "--kill-child",
                     *on_volume(self.volume, sys.executable, "-m", "launcher", "run",
                                "--state-dir", str(self.volume), *self.args)],
                    cwd=ROOT, stdout=log, stderr=log, env=env, start_new_session=True)
                self.starts += 1
            code = self.proc.wait()
            self.exits.append(code)
            if self.deleting.wait(backoff):
                break
            backoff = min(backoff * 2, 0.4)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pid1(self) -> psutil.Process | None:
        with self.lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            kids = psutil.Process(proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return kids[0] if kids else None

    def kill_container(self) -> None:
        """The container dies (OOM kill, failed liveness probe): SIGKILL to its PID 1."""
        pid1 = wait_until(self.pid1, 10, "container running")
        pid1.kill()

    def delete_pod(self, grace_s: float = 30.0) -> int:
        """TERM to PID 1, then KILL after the grace period; returns the last exit code."""
        self.deleting.set()
        pid1 = self.pid1()
        if pid1 is not None:
            pid1.send_signal(signal.SIGTERM)
        assert self.proc is not None
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.thread.join(10)
        return self.exits[-1]


@pytest.fixture
def kubelets() -> Iterator[list[Kubelet]]:
    made: list[Kubelet] = []
    yield made
    for k in made:
        k.deleting.set()
        if k.proc is not None and k.proc.poll() is None:
            k.proc.kill()
        k.thread.join(10)


def test_pod_story_update_exit_100_and_rollback_in_place(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path, kubelets: list[Kubelet]) -> None:
    """Seed → 0.1.1 → exit 100 → 0.1.1 commits → crashing 0.1.2 → exit 100 → rolled back in
    place to 0.1.1 with no further exit; pod deletion then stops it with exit 0."""
    probe = launcher()  # only for its health helpers and port
    args = [*fast_args(server, probe), "--seed-binary", str(build("0.1.0")), "--",
            "run", "--health-addr", f"127.0.0.1:{probe.health_port}"]
    kube = Kubelet(tmp_path / "volume", args, tmp_path / "pod.log").start()
    kubelets.append(kube)
    probe.log_path = kube.log_path
    probe.state_dir = kube.volume
    probe.wait_healthy("0.1.0")
    assert kube.exits == []

    server.publish("0.1.1", build("0.1.1"))
    wait_until(lambda: kube.exits == [100], 20, "exit 100 after the swap")
    probe.wait_healthy("0.1.1")
    probe.wait_state(lambda s: s.get("phase") == "committed"
                     and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    assert "swapped in 0.1.1; exiting 100" in kube.log()

    server.publish("0.1.2", script_agent(tmp_path / "crash", "0.1.2", "exit 1"))
    probe.wait_state(lambda s: "0.1.2" in [b["version"] for b in s.get("bad", [])],
                     timeout=30, what="0.1.2 marked bad")
    probe.wait_healthy("0.1.1")
    checks = kube.log().count("started update check")
    probe.wait_log("started update check", count=checks + 2)
    assert kube.exits == [100, 100], "a rollback happens in place, never with another exit"
    assert kube.delete_pod() == 0


def test_container_restarts_during_a_trial_fail_it(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path, kubelets: list[Kubelet]) -> None:
    """A build on trial whose container keeps dying is rolled back after the limit."""
    probe = launcher()
    args = [*fast_args(server, probe, **{"--health-window": "60"}),
            "--seed-binary", str(build("0.1.0")), "--",
            "run", "--health-addr", f"127.0.0.1:{probe.health_port}"]
    kube = Kubelet(tmp_path / "volume", args, tmp_path / "pod.log").start()
    kubelets.append(kube)
    probe.log_path = kube.log_path
    probe.state_dir = kube.volume
    probe.wait_healthy("0.1.0")
    server.publish("0.1.1", build("0.1.1"))
    wait_until(lambda: kube.exits == [100], 20, "exit 100 after the swap")
    for n in range(3):
        probe.wait_state(lambda s, n=n: (s.get("trial") or {}).get("container_restarts") == n + 1,
                         what=f"trial start {n + 1}")
        probe.wait_healthy("0.1.1")
        kube.kill_container()
        wait_until(lambda n=n: len(kube.exits) == n + 2, 10, "container killed")
    st = probe.wait_state(lambda s: "0.1.1" in [b["version"] for b in s.get("bad", [])],
                          what="0.1.1 failed its trial")
    assert "container restarted 3 times during the trial" in st["bad"][0]["reason"]
    probe.wait_healthy("0.1.0")
    assert kube.delete_pod() == 0


def test_seeding_is_idempotent_and_version_aware(build: Callable[[str], Path],
                                                 tmp_path: Path) -> None:
    """Seed twice: one copy. A newer image replaces the volume's build; an older one does not.
    A truncated bin/agent on the volume is detected and re-seeded."""
    volume = tmp_path / "volume"

    def installed() -> str:
        return subprocess.run([str(volume / "bin" / "agent"), "--version"], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert "installed seed binary" in run_briefly(volume, build("0.1.0"))
    assert installed() == "0.1.0"
    assert "installed seed binary" not in run_briefly(volume, build("0.1.0"))
    assert "installed seed binary" in run_briefly(volume, build("0.1.1"))
    assert installed() == "0.1.1"
    log = run_briefly(volume, build("0.1.0"))
    assert "keeping 0.1.1 from the state dir (seed is 0.1.0)" in log
    assert installed() == "0.1.1"
    agent = volume / "bin" / "agent"
    agent.write_bytes(agent.read_bytes()[:100])
    log = run_briefly(volume, build("0.1.1"))
    assert "installed seed binary" in log
    assert installed() == "0.1.1"


def run_briefly(volume: Path, seed: Path) -> str:
    """Run the launcher in container mode until it has started its agent, stop it, return
    its log. Waiting for the line, not a fixed time, keeps this right on a loaded machine."""
    proc = subprocess.Popen(
        ["unshare", "--mount", *on_volume(
            volume, sys.executable, "-m", "launcher", "run", "--state-dir", str(volume),
            "--seed-binary", str(seed), "--mode", "container", "--", "run", "--health-addr",
            "127.0.0.1:0")], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    started = threading.Event()

    def read(stream: IO[str]) -> None:
        for line in stream:
            lines.append(line)
            if "supervising only" in line:
                started.set()

    reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
    reader.start()
    started.wait(30)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    reader.join(5)
    proc.stderr.close()
    err = "".join(lines)
    assert started.is_set(), err
    assert proc.returncode == 0, err
    return err


def test_held_sockets_in_container_mode_say_they_end_with_the_container(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path, kubelets: list[Kubelet]) -> None:
    """--listen in a container: said at start that the sockets close with exit 100; an update
    still exits 100 (today's behaviour), and the restarted container binds the port again and
    hands it to the new build."""
    probe = launcher()
    args = [*fast_args(server, probe), "--listen", f"127.0.0.1:{probe.health_port}",
            "--seed-binary", str(build("0.1.0")), "--",
            "run", "--health-addr", "127.0.0.1:0"]
    kube = Kubelet(tmp_path / "volume", args, tmp_path / "pod.log").start()
    kubelets.append(kube)
    probe.log_path = kube.log_path
    probe.state_dir = kube.volume
    probe.wait_healthy("0.1.0")
    assert "container mode: the listening sockets close when the launcher exits 100" \
        in kube.log()
    assert "serving on 1 inherited socket(s)" in kube.log()  # the agent, not its own bind

    server.publish("0.1.1", build("0.1.1"))
    wait_until(lambda: kube.exits == [100], 20, "exit 100 after the swap")
    probe.wait_healthy("0.1.1")
    probe.wait_state(lambda s: s.get("phase") == "committed"
                     and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    assert kube.log().count("holding 1 listening socket(s) for the agent") == 2
    assert kube.log().count("serving on 1 inherited socket(s)") == 2
    assert kube.delete_pod() == 0
