"""The demo behind ``scripts/demo.sh``: build, serve, update, roll back, on loopback.

Run it through demo.sh (which prepares the venv); ``--keep`` leaves the temp dir.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def wait(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"demo failed: timed out waiting for {what}")


def health(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            data: dict[str, object] = json.loads(resp.read())
            return data
    except (OSError, ValueError, http.client.HTTPException):  # e.g. the agent stopped mid-answer
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nginx-manager-demo-"))
    release, state = work / "release", work / "state"
    server_port, agent_port = free_port(), free_port()
    base = f"http://127.0.0.1:{server_port}"
    healthz = f"http://127.0.0.1:{agent_port}/healthz"
    launcher_log = work / "launcher.log"
    procs: list[subprocess.Popen[bytes]] = []

    def log_has(pattern: str) -> str | None:
        text = launcher_log.read_text(errors="replace") if launcher_log.exists() else ""
        m = re.search(pattern, text)
        return m.group(0) if m else None

    def line_with(text: str) -> str:
        for line in launcher_log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        return ""

    secret_key, public_key = work / "release.key", work / "release.pub"

    def release_version(version: str, *extra: str) -> None:
        subprocess.run([str(SCRIPTS / "release-local.sh"), version, "--release-dir",
                        str(release), "--base-url", base, "--sign-key", str(secret_key),
                        *extra], check=True)

    try:
        say(f"working in {work}")
        say("make a release signing key (minisign format); the launcher trusts its public half")
        subprocess.run([sys.executable, str(REPO / "packaging" / "minisign_tool.py"), "keygen",
                        "--secret-key", str(secret_key), "--public-key", str(public_key)],
                       check=True)
        say("publish 0.1.0 (built from source with its version baked in), signed")
        release_version("0.1.0")

        say(f"start the update server on {base}")
        with (work / "server.log").open("ab") as out:
            procs.append(subprocess.Popen([str(SCRIPTS / "update-server.sh"), "--dir",
                                           str(release), "--port", str(server_port)],
                                          stdout=out, stderr=out))
        wait("the update server", lambda: health(f"{base}/version.json"))
        first_manifest = ((release / "version.json").read_bytes(),
                          (release / "version.json.minisig").read_bytes())

        say("start the launcher on an empty state dir: it installs 0.1.0 and runs it")
        with launcher_log.open("ab") as out:
            procs.append(subprocess.Popen(
                ["nginx-manager-launcher", "run", "--state-dir", str(state),
                 "--manifest-url", f"{base}/version.json", "--allow-http",
                 "--public-key", str(public_key),
                 "--poll-interval", "2", "--jitter", "0", "--health-window", "4",
                 "--health-url", healthz, "--stop-grace", "5",
                 "--", "run", "--health-addr", f"127.0.0.1:{agent_port}"],
                stdout=out, stderr=out))
        wait("agent 0.1.0", lambda: (health(healthz) or {}).get("version") == "0.1.0")
        print(f"GET {healthz} -> {health(healthz)}")

        print(line_with("manifest signature verified"))

        say("publish 0.1.1: the launcher finds it, swaps it in and restarts the agent")
        release_version("0.1.1")
        wait("the update line", lambda: log_has(r"Update found: 0\.1\.1\. Synchronizing\.\.\."))
        print(line_with("Update found: 0.1.1. Synchronizing..."))
        wait("agent 0.1.1", lambda: (health(healthz) or {}).get("version") == "0.1.1")
        print(f"GET {healthz} -> {health(healthz)}")
        wait("the commit of 0.1.1", lambda: log_has(r"update to 0\.1\.1 committed"))
        print(line_with("update to 0.1.1 committed"))

        say("replay the signed 0.1.0 manifest: its older serial is refused, nothing changes")
        replay = (release / "version.json").read_bytes(), (release / "version.json.minisig"
                                                             ).read_bytes()
        (release / "version.json").write_bytes(first_manifest[0])
        (release / "version.json.minisig").write_bytes(first_manifest[1])
        wait("the replay refusal", lambda: log_has(r"rollback: manifest 0\.1\.0 has serial"))
        print(line_with("rollback: manifest 0.1.0 has serial"))
        (release / "version.json").write_bytes(replay[0])
        (release / "version.json.minisig").write_bytes(replay[1])

        say("publish 0.1.2, a build that crashes on start: the launcher rolls back")
        crasher = work / "agent-0.1.2-crashes"
        crasher.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo 0.1.2; exit 0; fi\n'
                           'echo "0.1.2: fatal error on start" >&2\nexit 1\n')
        crasher.chmod(0o755)
        release_version("0.1.2", "--binary", str(crasher))
        wait("the rollback", lambda: log_has(r"rolled back to 0\.1\.1"))
        print(line_with("rolled back to 0.1.1"))
        wait("agent 0.1.1 again", lambda: (health(healthz) or {}).get("version") == "0.1.1")
        print(f"GET {healthz} -> {health(healthz)}")
        wait("a check that skips the bad build", lambda: log_has(r"0\.1\.2 .*is marked bad"))
        print(line_with("is marked bad"))

        say("nginx-manager-launcher status")
        subprocess.run(["nginx-manager-launcher", "status", "--state-dir", str(state)],
                       check=True)
        return 0
    finally:
        say("stop everything")
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print(f"launcher exited {procs[-1].returncode if procs else '-'}; full log: "
              f"{launcher_log}")
        if not args.keep and os.environ.get("DEMO_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
