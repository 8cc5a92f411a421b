"""The launcher as PID 1 of a fresh PID namespace (``unshare --pid --fork --mount-proc``).

Signals are sent from outside the namespace, as a container runtime does; zombies and
leftover processes are looked for from outside too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, Launcher, script_agent, unavailable, wait_until

UNSHARE = shutil.which("unshare")


def _require_unshare() -> None:
    if UNSHARE is None or subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "true"],
                                         capture_output=True, check=False).returncode != 0:
        unavailable("unshare --pid is needed for the PID 1 tests")


class Namespaced:
    """A launcher as PID 1 of its own PID namespace."""

    def __init__(self, tmp: Path, agent: Path, *extra: str, env: dict[str, str] | None = None,
                 preexec: object = None) -> None:
        _require_unshare()
        self.state_dir = tmp / "state"
        self.log_path = tmp / "launcher.log"
        cmd = [UNSHARE or "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
               sys.executable, "-m", "launcher", "run", "--state-dir", str(self.state_dir),
               "--seed-binary", str(agent), "--stop-grace", "3", *extra]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, **(env or {})},
                preexec_fn=preexec)  # type: ignore[arg-type]  # noqa: PLW1509  (the point of one test)
        self.pid1 = wait_until(self._find_pid1, 10, "namespace PID 1")

    def _find_pid1(self) -> psutil.Process | None:
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return kids[0] if kids else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        try:
            wait_until(lambda: text in self.log(), timeout, repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def family(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def zombies(self) -> list[int]:
        out = []
        for p in self.family():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.pid1.send_signal(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[list[Namespaced]]:
    made: list[Namespaced] = []
    yield made
    for n in made:
        n.cleanup()


def test_orphans_are_reaped_as_pid1(tmp_path: Path, ns: list[Namespaced]) -> None:
    """An agent that orphans 20 grandchildren leaves no zombie behind."""
    agent = script_agent(tmp_path / "a", "1.0.0",
                         "i=0; while [ $i -lt 20 ]; do (sleep 0.2 &); i=$((i+1)); done\n"
                         "exec sleep 60")
    n = Namespaced(tmp_path, agent)
    ns.append(n)
    n.wait_log("started agent 1.0.0")
    # The orphans' sleeps end after 0.2 s; as PID 1 the launcher must collect them.
    wait_until(lambda: len(n.family()) == 2 and not n.zombies(), 10,
               "orphans reaped (only the launcher and the agent left)")
    assert n.stop() == 0


def test_agent_exit_code_is_exact_amid_orphan_exits(tmp_path: Path,
                                                    ns: list[Namespaced]) -> None:
    """The agent exits 3 while orphans exit around it: the launcher records 3, never 0."""
    agent = script_agent(tmp_path / "a", "1.0.0",
                         "i=0; while [ $i -lt 30 ]; do (true &); i=$((i+1)); done\nexit 3")
    n = Namespaced(tmp_path, agent)
    ns.append(n)
    n.wait_log("agent 1.0.0 exited 3")
    assert "exited 0" not in n.log()
    assert n.stop() == 0


def test_term_from_outside_stops_everything_promptly(tmp_path: Path,
                                                     ns: list[Namespaced]) -> None:
    """TERM to namespace PID 1 from the host (as a runtime sends it) ends all in time."""
    agent = script_agent(tmp_path / "a", "1.0.0", "exec sleep 60")
    n = Namespaced(tmp_path, agent)
    ns.append(n)
    n.wait_log("started agent 1.0.0")
    started = time.monotonic()
    assert n.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert n.family() == []


def test_setsid_grandchild_is_cleaned_up_on_stop(tmp_path: Path,
                                                 ns: list[Namespaced]) -> None:
    """A grandchild that left the agent's process group with setsid() is still stopped."""
    marker = tmp_path / "escaped.pid"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"setsid sh -c 'echo $$ > {marker}; exec sleep 300' &\nexec sleep 60")
    n = Namespaced(tmp_path, agent)
    ns.append(n)
    wait_until(marker.exists, 10, "escaped grandchild")
    assert n.stop() == 0
    assert n.family() == []


def test_setsid_grandchild_is_cleaned_up_without_namespace(
        tmp_path: Path, launcher: Callable[..., Launcher]) -> None:
    """Not PID 1 (as under systemd): the sweep of descendants still ends an escaped child."""
    marker = tmp_path / "escaped.pid"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"setsid sh -c 'echo $$ > {marker}; exec sleep 300' &\nexec sleep 60")
    lch = launcher().start("--seed-binary", str(agent), agent_args=())
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 10, "grandchild")
    escaped = int(marker.read_text())
    assert lch.stop() == 0
    wait_until(lambda: not psutil.pid_exists(escaped)
               or psutil.Process(escaped).status() == psutil.STATUS_ZOMBIE, 5,
               "escaped grandchild gone")


@pytest.mark.parametrize("sig", ["HUP", "USR1", "USR2", "QUIT"])
def test_signals_are_forwarded_to_the_agent(sig: str, tmp_path: Path,
                                            ns: list[Namespaced]) -> None:
    """HUP, USR1, USR2 and QUIT sent to PID 1 reach the agent; the launcher keeps running."""
    got = tmp_path / "got"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"trap 'echo {sig} >> {got}' {sig}\n"
                         "while :; do sleep 0.05; done")
    n = Namespaced(tmp_path, agent)
    ns.append(n)
    n.wait_log("started agent 1.0.0")
    time.sleep(0.3)  # let the shell install its trap before the first signal
    n.pid1.send_signal(getattr(signal, f"SIG{sig}"))
    wait_until(lambda: got.exists() and sig in got.read_text(), 5, f"agent got {sig}")
    assert n.proc.poll() is None
    assert n.stop() == 0


def _ignore_and_block() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGHUP})


def test_agent_gets_clean_signal_state_and_environment(tmp_path: Path,
                                                       ns: list[Namespaced]) -> None:
    """Started from a launcher that inherited ignored and blocked signals and systemd's
    variables, the agent still has an empty mask, no ignored signals, and none of systemd's
    variables: its NOTIFY_SOCKET is the launcher's own (issue 12), not the one systemd gave."""
    dump = tmp_path / "dump"
    # grep reads its own status: a shell may block signals around its forks.
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"env > {dump}.tmp; grep -E '^Sig(Blk|Ign)' /proc/self/status >> "
                         f"{dump}.tmp; mv {dump}.tmp {dump}\nexec sleep 60")
    n = Namespaced(tmp_path, agent, env={"NOTIFY_SOCKET": str(tmp_path / "nosock"),
                                         "WATCHDOG_USEC": "100000000", "LISTEN_FDS": "1",
                                         "LISTEN_PID": "1", "KEEP_ME": "yes",
                                         "GITHUB_TOKEN": "secret"},
                   preexec=_ignore_and_block)
    ns.append(n)
    wait_until(dump.exists, 10, "agent dump")
    text = dump.read_text()
    assert "SigBlk:\t0000000000000000" in text
    ignored = int(text.split("SigIgn:\t")[1].split()[0], 16)
    # Signals 1-31 (PIPE and XFSZ, which Python ignores, INT and USR1, which the test's
    # parent ignored) are back to default. glibc's posix_spawn leaves its two internal
    # real-time signals (32, 33) ignored; glibc programs reinstall those themselves.
    assert ignored & 0x7FFFFFFF == 0, hex(ignored)
    notify = [line.split("=", 1)[1] for line in text.splitlines()
              if line.startswith("NOTIFY_SOCKET=")]
    assert len(notify) == 1 and str(tmp_path / "nosock") not in notify[0]
    assert notify[0].endswith("/run/agent-notify.sock") or notify[0].startswith("@")
    assert "WATCHDOG_" not in text and "LISTEN_" not in text
    assert "GITHUB_TOKEN" not in text and "NGINX_MANAGER_" not in text
    assert "KEEP_ME=yes" in text
    assert n.stop() == 0


def test_subreaper_adopts_orphans_when_not_pid1(
        tmp_path: Path, launcher: Callable[..., Launcher]) -> None:
    """Without a namespace the launcher registers as child subreaper and reaps orphans."""
    marker = tmp_path / "orphan.pid"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"(sh -c 'echo $$ > {marker}; exec sleep 3' &)\nexec sleep 60")
    lch = launcher().start("--seed-binary", str(agent), agent_args=())
    assert lch.proc is not None
    pid = lch.proc.pid
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 10, "orphan")
    orphan = psutil.Process(int(marker.read_text()))
    # The marker is written while its subshell still runs: it is orphaned when that exits.
    wait_until(lambda: orphan.ppid() == pid, 2.5, "the orphan adopted by the launcher")
    assert orphan.ppid() == pid
    wait_until(lambda: not psutil.pid_exists(orphan.pid), 10, "orphan reaped")
    assert lch.stop() == 0


@pytest.mark.parametrize(("on_term", "expected"), [
    ("exit 0", 0), ("exit 1", 1), ("exit 2", 2), ("exit 127", 127), ("exit 255", 255),
    ("trap - HUP; kill -HUP $$", 128 + signal.SIGHUP),
    ("trap - TERM; kill -TERM $$", 0),  # dying of the forwarded TERM is a clean stop
    ("", 128 + signal.SIGKILL),  # TERM ignored: SIGKILL after the grace
])
def test_exit_code_after_a_requested_stop(on_term: str, expected: int, tmp_path: Path,
                                          ns: list[Namespaced]) -> None:
    """TERM to PID 1: exit 0 for a clean stop, else the agent's code or 128+signal."""
    trap = f"trap '{on_term}' TERM" if on_term else "trap '' TERM"
    agent = script_agent(tmp_path / "a", "1.0.0",
                         f"{trap}\necho ready > {tmp_path}/ready\n"
                         "while :; do sleep 0.05; done")
    n = Namespaced(tmp_path, agent, "--stop-grace", "1")
    ns.append(n)
    wait_until((tmp_path / "ready").exists, 10, "agent trap installed")
    assert n.stop() == expected
