"""Faults an adversarial review of the rebuilt resident found, each kept fixed by its test.

D1-D3: a survivor stopped with its whole family, found when killed between spawn and
journal, found whatever the state dir's spelling; D4-D7: nothing ends the resident (a month-
long timer, a non-UTF-8 config, an unreadable agent.old at rollback, an odd journal); D8:
processes the launcher inherited are not the agent's leftovers; D9: a resumed trial is judged
at its end as in its middle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, Launcher, UpdateServer, fast_args, script_agent, wait_until

from launcher.journal import Build, Trial
from launcher.trial import TrialJudge

LOOPER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


LOOPER = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


def test_a_long_poll_interval_does_not_kill_the_resident(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """--poll-interval 30 days (valid: "no floor beyond > 0"): after the first check the
    loop waits 30 days. select() on epoll takes at most ~24.8 days."""
    agent = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    server.publish("0.1.0", agent)
    lch = launcher()
    lch.start(*fast_args(server, lch, **{"--poll-interval": "2592000", "--health-url": ""}),
              "--seed-binary", str(agent), agent_args=())
    lch.wait_log("next check in 2592000")
    time.sleep(2)
    assert lch.proc is not None
    assert lch.proc.poll() is None, f"launcher exited {lch.proc.returncode}:\n{lch.log()}"
    assert lch.stop() == 0


def test_a_config_file_with_a_bad_byte_is_refused_not_fatal(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """An editor saves the config in latin-1 (a comment with an e-acute): the reload must
    be refused like any bad config, not end the launcher and its agent."""
    agent = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    config = tmp_path / "launcher.toml"
    config.write_text("stop_grace = 3\n")
    lch = launcher()
    lch.start("--config", str(config), "--seed-binary", str(agent), agent_args=())
    lch.wait_log("started agent")
    time.sleep(1.0)
    config.write_bytes(b"# caf\xe9\nstop_grace = 4\n")
    time.sleep(3)
    assert lch.proc is not None
    assert lch.proc.poll() is None, f"launcher exited {lch.proc.returncode}:\n{lch.log()}"
    assert lch.stop() == 0


def test_an_unreadable_agent_old_does_not_kill_the_resident_on_rollback(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """agent.old cannot be hashed (a read error; here: it is a directory). The operator's
    rollback must get an answer; the launcher and its agent must keep running."""
    from conftest import run_cli

    old = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    new = script_agent(tmp_path / "a1", "0.1.1", LOOPER)
    server.publish("0.1.1", new)
    lch = launcher()
    lch.start(*fast_args(server, lch, **{"--health-url": ""}), "--seed-binary", str(old),
              agent_args=())
    lch.wait_state(lambda s: s.get("phase") == "committed"
                   and s["current"]["version"] == "0.1.1", what="0.1.1 committed")
    bad_old = lch.state_dir / "bin" / "agent.old"
    bad_old.unlink()
    bad_old.mkdir()
    out = run_cli("rollback", "--state-dir", str(lch.state_dir))
    print(out.returncode, out.stdout, out.stderr)
    time.sleep(1)
    assert lch.proc is not None
    assert lch.proc.poll() is None, f"launcher exited {lch.proc.returncode}:\n{lch.log()}"
    assert lch.stop() == 0


WRAPPED = """#!/bin/sh
if [ "$1" = --version ]; then echo {version}; exit 0; fi
{python} -c '
import http.server, json, signal, sys, time
def term(*_):
    time.sleep(2.0)   # graceful drain: the listening socket is still open
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"status": "ok", "version": "{version}"}}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
'
"""


def wrapped(path: Path, version: str, port: int) -> Path:
    path.write_text(WRAPPED.format(version=version, port=port, python=sys.executable))
    path.chmod(0o755)
    return path


def test_a_survivor_whose_server_drains_is_fully_stopped_before_the_trial_resumes(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    lch = launcher()
    old = wrapped(tmp_path / "a0", "0.1.0", lch.health_port)
    new = wrapped(tmp_path / "a1", "0.1.1", lch.health_port)
    server.publish("0.1.1", new)
    lch.start(*fast_args(server, lch, **{"--health-window": "8"}), "--seed-binary", str(old),
              agent_args=())
    lch.wait_state(lambda s: (s.get("trial") or {}).get("healthy_seen") is True,
                   timeout=30, what="0.1.1 healthy on trial")
    assert lch.proc is not None
    lch.proc.kill()          # the launcher alone (KillMode=process)
    lch.proc.wait(10)
    again = launcher(lch.state_dir).start(*fast_args(server, lch, **{"--health-window": "8"}),
                                          agent_args=())
    again.wait_log("outlived the previous launcher")
    st = again.wait_state(lambda s: s.get("phase") == "committed", timeout=30,
                          what="trial ended")
    print(again.log())
    assert st["current"]["version"] == "0.1.1" and st["bad"] == [], st["bad"]
    assert again.stop() == 0




def _agents(state_dir: Path) -> list[psutil.Process]:
    path = str(state_dir / "bin" / "agent")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if path in (p.info["cmdline"] or [])[:2] and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _kill_at_log_line(lch: Launcher, needle: bytes, timeout: float = 30.0) -> None:
    """SIGKILL the launcher alone the instant ``needle`` appears in its log."""
    import os

    assert lch.proc is not None
    fd = os.open(lch.log_path, os.O_RDONLY)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while needle not in buf:
            assert time.monotonic() < deadline, buf.decode(errors="replace")
            buf += os.read(fd, 65536)
    finally:
        os.close(fd)
    lch.proc.send_signal(signal.SIGKILL)
    lch.proc.wait(10)


def test_a_launcher_killed_as_it_starts_the_trial_agent_does_not_mark_the_build_bad(
        server: UpdateServer, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Launcher alone killed between spawning the trial's agent and journaling its pid:
    the next launcher cannot find that agent, starts a second one, the port clash fails the
    trial and a good build is marked bad."""
    server.publish("0.1.1", build("0.1.1"))
    lch = launcher()
    lch.start(*fast_args(server, lch, **{"--health-window": "4"}), "--seed-binary",
              str(build("0.1.0")))
    _kill_at_log_line(lch, b"started agent 0.1.1")
    print("journal child at the kill:", lch.state().get("child"), lch.state().get("phase"))
    again = launcher(lch.state_dir).start(*fast_args(server, lch, **{"--health-window": "4"}))
    try:
        st = again.wait_state(lambda s: s.get("phase") == "committed", timeout=30,
                              what="trial ended")
        print(again.log())
        assert st["bad"] == [], st["bad"]
        assert st["current"]["version"] == "0.1.1"
    finally:
        for p in _agents(lch.state_dir):
            if p.ppid() != (again.proc.pid if again.proc else -1):
                p.kill()
    assert again.stop() == 0


def test_a_survivor_is_found_when_the_state_dir_is_spelled_differently(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """The same state dir reached through a symlink (the unit now says /var/lib/..., which
    links to the data disk): the survivor runs the same file but under another spelling."""
    from conftest import script_agent

    agent = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    real = tmp_path / "state"
    link = tmp_path / "link"
    link.symlink_to(real)
    lch = launcher(real)
    lch.start("--seed-binary", str(agent), agent_args=())
    lch.wait_log("started agent")
    time.sleep(0.5)
    assert lch.proc is not None
    survivor = lch.state()["child"]["pid"]
    lch.proc.kill()
    lch.proc.wait(10)
    again = launcher(link).start("--seed-binary", str(agent), agent_args=())
    again.wait_log("started agent")
    time.sleep(2)
    alive = psutil.pid_exists(survivor) and \
        psutil.Process(survivor).status() != psutil.STATUS_ZOMBIE
    if alive:
        psutil.Process(survivor).kill()
    assert not alive, "two agents: the survivor was not recognised\n" + again.log()
    assert again.stop() == 0




def _seeded(launcher: Callable[..., Launcher], tmp_path: Path) -> tuple[Launcher, Path]:
    agent = script_agent(tmp_path / "a0", "0.1.0", LOOPER)
    lch = launcher()
    lch.start("--seed-binary", str(agent), agent_args=())
    lch.wait_log("started agent")
    assert lch.stop() == 0
    return lch, agent


@pytest.mark.parametrize("edit", [
    {"phase": "trial", "trial": None},              # a trial row without its trial
    {"child": {"pid": -5, "state": "running", "since": "x", "create_time": 1.0}},
    {"child": {"pid": "123", "state": "running", "since": "x", "create_time": 1.0}},
], ids=["trial-without-trial", "negative-pid", "string-pid"])
def test_an_odd_journal_does_not_stop_the_launcher_from_starting(
        launcher: Callable[..., Launcher], tmp_path: Path, edit: dict) -> None:
    lch, agent = _seeded(launcher, tmp_path)
    path = lch.state_dir / "state.json"
    d = json.loads(path.read_text())
    d.update(edit)
    path.write_text(json.dumps(d))
    again = launcher(lch.state_dir).start("--seed-binary", str(agent), agent_args=())
    time.sleep(3)
    assert again.proc is not None
    assert again.proc.poll() is None, f"exited {again.proc.returncode}:\n{again.log()}"
    assert again.stop() == 0


def test_a_process_the_launcher_inherited_is_not_killed_when_the_agent_exits(
        tmp_path: Path) -> None:
    """An entrypoint that starts a helper then execs the launcher (`helper & exec launcher`):
    the helper is the launcher's child from the first instant but no orphan of the agent.
    The agent crashes once; the helper must survive it."""
    agent = script_agent(tmp_path / "a", "1.0.0", "sleep 1; exit 3")
    log = (tmp_path / "log").open("wb")
    cmd = (f"sleep 4444.4 & exec {sys.executable} -m launcher run --state-dir "
           f"{tmp_path / 'state'} --seed-binary {agent} --")
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, stdout=log, stderr=log,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    helper = None
    try:
        helper = wait_until(lambda: [c for c in psutil.Process(proc.pid).children()
                                     if c.cmdline()[-1:] == ["4444.4"]], 10, "helper")[0]
        wait_until(lambda: "restarting agent" in (tmp_path / "log").read_text(), 20, "a crash")
        time.sleep(0.5)
        assert helper.is_running() and helper.status() != psutil.STATUS_ZOMBIE, \
            "the launcher killed a process it inherited"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        if helper is not None and helper.is_running():
            helper.kill()


B = Build("0.1.1", "a" * 64)
URL = "http://127.0.0.1:1/healthz"


def resumed(run_time_s: float) -> TrialJudge:
    """A trial resumed after a launcher restart: the build answered in an earlier run."""
    judge = TrialJudge(Trial(B, "t", run_time_s=run_time_s, healthy_seen=True), 60.0,
                       health_url=URL)
    judge.child_started()
    return judge


def verdict_for_slow_start(judge: TrialJudge, answers_at_s: float) -> str:
    """The restarted child fails its probes until ``answers_at_s``, then answers; one probe
    every 2 s (the judge's own tick for a 60 s window)."""
    age = 0.0
    while age < 100:
        v = judge.observe(age, age >= answers_at_s)
        if v.kind != "wait":
            return f"{v.kind} at {age:.0f}s: {v.reason}"
        age += judge.tick_interval_s()
    return "still waiting"


def test_a_resumed_trial_is_judged_the_same_at_the_end_of_its_window_as_mid_window() -> None:
    # The same child (answers 13 s after its start) in the same resumed trial; only where in
    # the window the launcher restart happened differs.
    mid = verdict_for_slow_start(resumed(10.0), answers_at_s=13.0)
    end = verdict_for_slow_start(resumed(59.0), answers_at_s=13.0)
    print("mid-window:", mid)
    print("end of window:", end)
    assert mid.split()[0] == end.split()[0], (mid, end)
