"""The health window through a real launcher: its end judged like its middle, a fair grace
after a restart, and a failed trial with nothing to roll back to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import Launcher, UpdateServer, fast_args, script_agent

# A health server that can be told to fail: by the trial's run time in the journal, or by
# being slow to start on all but its first run.
HEALTH_AGENT = """#!/usr/bin/env python3
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
if sys.argv[1:] == ["--version"]:
    print("{version}")
    sys.exit(0)
runs = os.environ.get("RUNS_FILE")
if runs:
    n = int(open(runs).read()) if os.path.exists(runs) else 0
    open(runs, "w").write(str(n + 1))
    if n > 0:
        time.sleep({slow_start})
failed = []

def fail_now():
    journal = os.environ.get("FAIL_AT_RUN_TIME")
    if not journal or failed:
        return False
    path, at = journal.rsplit(":", 1)
    try:
        run = json.load(open(path))["trial"]["run_time_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if run >= float(at):
        failed.append(run)
        return True
    return False

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if fail_now() else 200
        body = json.dumps({{"status": "ok", "version": "{version}"}}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"""


def health_agent(path: Path, version: str, port: int, slow_start: float = 0.0) -> Path:
    path.write_text(HEALTH_AGENT.format(version=version, port=port, slow_start=slow_start))
    path.chmod(0o755)
    return path


def test_one_failed_probe_on_the_last_tick_does_not_fail_a_healthy_build(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """The agent answers every probe but the one that closes its 2 s window: the trial
    waits for the next answer and commits."""
    lch = launcher()
    server.publish("0.1.1", health_agent(tmp_path / "a1", "0.1.1", lch.health_port))
    journal = lch.state_dir / "state.json"
    # The observation before the last one records a run time of 1.8 s or more (a tick is
    # 0.2 s), so the next probe is the one at the end of the window.
    lch.start(*fast_args(server, lch, **{"--health-window": "2"}), "--seed-binary",
              str(build("0.1.0")), env={"FAIL_AT_RUN_TIME": f"{journal}:1.8"})
    st = lch.wait_state(lambda s: (s.get("phase") == "committed"
                        and (s.get("current") or {}).get("version") == "0.1.1")
                        or bool(s.get("bad")), timeout=30, what="the trial decided")
    assert st["bad"] == [], st["bad"]
    assert st["current"]["version"] == "0.1.1"
    assert lch.stop() == 0


def test_a_resumed_trial_gives_a_slow_starting_child_its_grace(
        server: UpdateServer, launcher: Callable[..., Launcher], build: Callable[[str], Path],
        tmp_path: Path) -> None:
    """Healthy before a power loss; after it, the restarted child takes 1.5 s to listen,
    longer than three probe intervals: its grace covers that, the trial commits."""
    lch = launcher()
    runs = tmp_path / "runs"
    server.publish("0.1.1", health_agent(tmp_path / "a1", "0.1.1", lch.health_port,
                                         slow_start=1.5))
    args = fast_args(server, lch, **{"--health-window": "4"})
    env = {"RUNS_FILE": str(runs)}
    lch.start(*args, "--seed-binary", str(build("0.1.0")), env=env)
    lch.wait_state(lambda s: (s.get("trial") or {}).get("healthy_seen") is True, timeout=30,
                   what="0.1.1 healthy on trial")
    lch.kill_tree()
    assert lch.state()["phase"] == "trial"
    again = launcher(lch.state_dir).start(*args, env=env)
    st = again.wait_state(lambda s: s.get("phase") == "committed" or bool(s.get("bad")),
                          timeout=30, what="the resumed trial decided")
    assert st["bad"] == [], st["bad"]
    assert st["current"]["version"] == "0.1.1"
    assert int(runs.read_text()) >= 2
    assert again.stop() == 0


def test_a_failed_trial_with_nothing_to_roll_back_to_keeps_the_host_updatable(
        server: UpdateServer, launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """Power loss during the very first install leaves a trial with no agent.old; the build
    crashes. It is marked bad and kept under backoff, checks go on, the fix installs."""
    server.publish("0.1.1", script_agent(tmp_path / "a1", "0.1.1", "exit 1"))
    lch = launcher()
    args = fast_args(server, lch, **{"--health-url": ""})
    lch.start(*args, agent_args=(), env={"NGINX_MANAGER_FAULT_POINT": "swap.renamed"})
    assert lch.proc is not None
    lch.proc.wait(30)
    again = launcher(lch.state_dir).start(*args, agent_args=())
    again.wait_log("cannot roll back from 0.1.1")
    # The line is logged before the journal is written: wait for the journal.
    st = again.wait_state(lambda s: bool(s.get("bad")), what="the bad mark journaled")
    assert [b["version"] for b in st["bad"]] == ["0.1.1"]
    server.publish("0.1.2", script_agent(tmp_path / "a2", "0.1.2", "exec sleep 100000"))
    st = again.wait_state(lambda s: s.get("phase") == "committed"
                          and (s.get("current") or {}).get("version") == "0.1.2",
                          timeout=30, what="the fixed release installed")
    assert (st.get("child") or {}).get("version") == "0.1.2"
    assert again.stop() == 0
