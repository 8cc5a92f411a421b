"""The Debian package under a real systemd 252, booted in ``systemd-nspawn``.

Each test boots its own copy of the cached Debian 12 root, installs the package as an
operator would (``apt-get install ./nginx-manager-agent_..._amd64.deb``), configures a signed
update source on the host's loopback, and judges by systemd's own view: ``systemctl show``
and ``journalctl``. Timings are shortened only through the config file and a test drop-in
(the agent's health port, and for the watchdog test a shorter ``WatchdogSec=``); the shipped
unit, hardening included, is what runs.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import release_tool
from conftest import ROOT, agent_health, free_port, script_agent, wait_until
from signing import Key, make_key

from platforms.conftest import need_tool
from platforms.machine import Machine

pytestmark = pytest.mark.timeout(300)

UNIT = "nginx-manager-agent.service"
SOCKET = "nginx-manager-agent.socket"
SEED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CLAIMED_SCORE = 1.1  # README, docs/RELIABILITY.md; tests/test_systemd_unit.py offline
TIMEOUT_STOP_S = 30


class Release:
    """Signed releases published into a directory the host's update server serves."""

    def __init__(self, directory: Path, key: Key, base_url: str) -> None:
        self.dir, self.key, self.base_url = directory, key, base_url

    def publish(self, version: str, binary: Path) -> None:
        release_tool.publish(version, self.dir, self.base_url, binary=binary,
                             sign_key=self.key.secret)


class Host:
    """The booted machine with the package installed and configured, and the host's side."""

    def __init__(self, machine: Machine, release: Release, health_port: int) -> None:
        self.m, self.release, self.health_port = machine, release, health_port

    def show(self, *props: str) -> dict[str, str]:
        return self.m.show(UNIT, *props)

    def journal(self) -> str:
        return self.m.journal(UNIT)

    def health(self) -> dict[str, Any] | None:
        return agent_health(f"http://127.0.0.1:{self.health_port}/healthz")

    def wait_version(self, version: str, timeout: float = 60.0) -> dict[str, Any]:
        def answered() -> dict[str, Any] | None:
            h = self.health()
            return h if h and h.get("version") == version else None

        try:
            found: dict[str, Any] = wait_until(answered, timeout, f"agent {version} answering")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.journal()[-4000:]}") from None
        return found

    def wait_journal(self, pattern: str, timeout: float = 60.0, count: int = 1) -> None:
        try:
            wait_until(lambda: len(re.findall(pattern, self.journal())) >= count, timeout,
                       f"journal line {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.journal()[-4000:]}") from None

    def status(self) -> dict[str, Any]:
        out = self.m.run("nginx-manager-launcher", "status", "--json").stdout
        data: dict[str, Any] = json.loads(out)
        return data

    def wait_committed(self, version: str, timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            s = self.status()
            return s if s["current_version"] == version and s["phase"] == "committed" else None

        found: dict[str, Any] = wait_until(done, timeout, f"{version} committed")
        return found

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])


def boot_copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "machine"
    subprocess.run(["cp", "-a", "--reflink=auto", str(root), str(copy)], check=True,
                   timeout=300)
    return copy


@pytest.fixture
def machine(debian_rootfs: Path, tmp_path: Path) -> Iterator[Machine]:
    need_tool("systemd-nspawn")
    need_tool("nsenter")
    copy = boot_copy(debian_rootfs, tmp_path)
    with Machine.boot(copy, tmp_path / "nspawn.log") as m:
        yield m
    shutil.rmtree(copy, ignore_errors=True)


def install(m: Machine, deb: Path) -> subprocess.CompletedProcess[str]:
    shutil.copy(deb, m.root / "root" / deb.name)
    return m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                 "--no-install-recommends", f"/root/{deb.name}", timeout=300)


@pytest.fixture
def host(machine: Machine, deb: Path, server: Any, tmp_path: Path) -> Host:
    """Installed, configured for a signed source on the host, not yet started."""
    install(machine, deb)
    key = make_key(tmp_path / "keys", "release")
    shutil.copy(key.public, machine.root / "etc/nginx-manager/release.pub")
    port = free_port()
    machine.write("/etc/nginx-manager/launcher.toml", "\n".join([
        f'manifest_url = "{server.manifest_url}"',
        "allow_http = true",
        'public_key = ["/etc/nginx-manager/release.pub"]',
        "poll_interval = 1", "jitter = 0", "health_window = 3", "stop_grace = 5",
        f'health_url = "http://127.0.0.1:{port}/healthz"',
        'seed_binary = "/opt/nginx-manager-agent/agent"', ""]))
    machine.write(f"/etc/systemd/system/{UNIT}.d/test.conf", "\n".join([
        "[Service]", "ExecStart=",
        "ExecStart=/usr/bin/nginx-manager-launcher run --config "
        f"/etc/nginx-manager/launcher.toml -- run --health-addr 127.0.0.1:{port}", ""]))
    machine.run("systemctl", "daemon-reload")
    return Host(machine, Release(server.dir, key, server.base_url), port)


def service_uid(m: Machine) -> int:
    return int(m.run("id", "-u", "nginx-manager").stdout)


def crashing_build(tmp_path: Path, version: str) -> Path:
    return script_agent(tmp_path / f"agent-{version}", version, "echo crashing >&2\nexit 3")


def test_package_lifecycle_under_systemd(machine: Machine, deb: Path, tmp_path: Path) -> None:
    """Install leaves the service off and says what to set; upgrade restarts a running
    launcher; remove stops it and keeps the state; purge removes the state."""
    out = install(machine, deb).stdout
    assert "manifest_url" in out and "public_key" in out
    assert "systemctl enable --now nginx-manager-agent" in out
    assert machine.show(UNIT, "ActiveState", "UnitFileState") == {
        "ActiveState": "inactive", "UnitFileState": "disabled"}
    assert machine.run("nginx-manager-launcher", "--version").stdout.strip() == SEED
    user = machine.run("stat", "-c", "%U %a", "/var/lib/nginx-manager").stdout.split()
    assert user == ["nginx-manager", "700"]
    # The system Python is untouched: none of the launcher's libraries are importable there.
    bare = machine.run("python3", "-c", "import httpx", check=False)
    assert bare.returncode != 0 and "No module named 'httpx'" in bare.stderr

    # Configured as the message says (a key; the example's source need not answer), so the
    # launcher also starts once signatures are required by default.
    key = make_key(tmp_path / "keys", "release")
    shutil.copy(key.public, machine.root / "etc/nginx-manager/release.pub")
    conf = machine.root / "etc/nginx-manager/launcher.toml"
    conf.write_text(conf.read_text() + 'public_key = ["/etc/nginx-manager/release.pub"]\n')
    machine.run("systemctl", "start", UNIT)
    before = machine.show(UNIT, "MainPID", "ActiveState")
    assert before["ActiveState"] == "active"
    machine.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                "--reinstall", f"/root/{deb.name}", timeout=300)
    after = machine.show(UNIT, "MainPID", "ActiveState")
    assert after["ActiveState"] == "active"
    assert after["MainPID"] != before["MainPID"]  # the upgrade restarted the launcher

    machine.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y",
                "nginx-manager-agent", timeout=300)
    assert machine.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "")
    assert machine.run("test", "-e", "/var/lib/nginx-manager/state.json", check=False
                       ).returncode == 0
    assert machine.processes(uid=service_uid(machine)) == []
    machine.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y",
                "nginx-manager-agent", timeout=300)
    assert machine.run("test", "-e", "/var/lib/nginx-manager", check=False).returncode == 1
    assert machine.run("test", "-e", "/etc/nginx-manager/launcher.toml", check=False
                       ).returncode == 1


def test_ready_update_and_rollback_in_place(host: Host, build: Any, tmp_path: Path) -> None:
    """Active only after READY=1; an update and a rollback both happen inside one
    launcher process that systemd never restarts."""
    host.m.run("systemctl", "enable", "--now", UNIT)  # returns once READY=1 arrived
    shown = host.show("Type", "ActiveState", "SubState", "StatusText", "NRestarts",
                      "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    assert shown["Type"] == "notify"
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    assert SEED in shown["StatusText"]
    # The launcher logs its agent's start before it sends READY=1; systemd's own "Started"
    # line, written when READY arrives, comes after it.
    journal = host.journal()
    started_agent = journal.index(f"started agent {SEED}")
    assert journal.index("Started nginx-manager-agent.service") > started_agent
    assert (int(shown["ActiveEnterTimestampMonotonic"])
            > int(shown["ExecMainStartTimestampMonotonic"]))
    host.wait_version(SEED)
    pid = host.main_pid()

    host.release.publish("0.2.0", build("0.2.0"))
    host.wait_journal(r"Update found: 0\.2\.0\. Synchronizing\.\.\.")
    host.wait_version("0.2.0")
    host.wait_committed("0.2.0")
    shown = host.show("MainPID", "NRestarts", "StatusText", "ActiveState")
    assert shown["MainPID"] == str(pid)
    assert shown["NRestarts"] == "0"
    assert shown["ActiveState"] == "active"
    assert "0.2.0" in shown["StatusText"]

    host.release.publish("0.3.0", crashing_build(tmp_path, "0.3.0"))
    host.wait_journal(r"rolled back to 0\.2\.0")
    host.wait_version("0.2.0")
    status = host.status()
    assert status["current_version"] == "0.2.0"
    assert status["bad_versions"] == ["0.3.0"]
    shown = host.show("MainPID", "NRestarts", "ActiveState")
    assert (shown["MainPID"], shown["NRestarts"], shown["ActiveState"]) == (
        str(pid), "0", "active")


class Load:
    """New connections to the agent's port from the host, one ``GET /healthz`` each, every
    ``interval_s``; every refusal, reset, timeout or non-200 answer is kept."""

    def __init__(self, port: int, interval_s: float = 0.005) -> None:
        self.port, self.interval_s = port, interval_s
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.interval_s):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                answer = conn.getresponse()
                body = answer.read()
                if answer.status != 200:
                    self.failures.append(f"HTTP {answer.status}")
                    continue
                version = str(json.loads(body).get("version"))
                self.versions[version] = self.versions.get(version, 0) + 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)


def test_socket_activation_holds_the_port_through_update_and_rollback(
        host: Host, build: Any, tmp_path: Path) -> None:
    """The shipped .socket unit: systemd binds the agent's port, the launcher takes it over
    and hands it to every agent generation. Under a steady load of new connections an update
    and a rollback (overlap hand-over, READY from the agent) refuse or fail none."""
    port = host.health_port
    host.m.write(f"/etc/systemd/system/{SOCKET}.d/test.conf",
                 f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    conf = host.m.root / "etc/nginx-manager/launcher.toml"
    conf.write_text(conf.read_text() + 'ready = "notify"\nhandover = "overlap"\n')
    host.m.run("systemctl", "daemon-reload")
    host.m.run("systemctl", "enable", "--now", SOCKET)
    host.m.run("systemctl", "start", UNIT)
    host.wait_version(SEED)
    journal = host.journal()
    assert "took over 1 socket(s) from systemd" in journal
    assert "serving on 1 inherited socket(s) (LISTEN_FDS: health)" in journal
    pid = host.main_pid()

    with Load(port) as load:
        time.sleep(1.0)
        host.release.publish("0.2.0", build("0.2.0"))
        host.wait_committed("0.2.0")
        host.release.publish("0.3.0", crashing_build(tmp_path, "0.3.0"))
        host.wait_journal(r"rolled back to 0\.2\.0")
        assert host.status()["bad_versions"] == ["0.3.0"]
        time.sleep(1.0)
    assert load.failures == [], load.failures[:10]
    assert load.versions.get(SEED, 0) > 0 and load.versions.get("0.2.0", 0) > 0, load.versions
    assert sum(load.versions.values()) > 100, load.versions
    shown = host.show("MainPID", "NRestarts")
    assert (shown["MainPID"], shown["NRestarts"]) == (str(pid), "0")
    assert host.m.show(SOCKET, "ActiveState", "SubState") == {
        "ActiveState": "active", "SubState": "running"}


def launcher_processes(m: Machine) -> list[psutil.Process]:
    return m.processes(uid=service_uid(m))


def test_stop_start_and_sigkill(host: Host, build: Any) -> None:
    """stop ends launcher and agent within TimeoutStopSec; start resumes the same build; a
    SIGKILLed launcher is restarted by systemd and comes back consistent."""
    host.m.run("systemctl", "enable", "--now", UNIT)
    host.release.publish("0.2.0", build("0.2.0"))
    host.wait_committed("0.2.0")
    host.wait_version("0.2.0")
    assert len(launcher_processes(host.m)) >= 2  # launcher and agent (and helpers)

    began = time.monotonic()
    host.m.run("systemctl", "stop", UNIT)
    took = time.monotonic() - began
    assert took < TIMEOUT_STOP_S
    shown = host.show("ActiveState", "Result", "ExecMainStatus")
    assert shown["ActiveState"] == "inactive"
    assert shown["Result"] == "success"
    assert launcher_processes(host.m) == []
    assert "Killing process" not in host.journal()  # nothing was left for SIGKILL

    host.m.run("systemctl", "start", UNIT)
    host.wait_version("0.2.0")
    assert host.status()["current_version"] == "0.2.0"
    assert host.journal().count("Update found: 0.2.0") == 1

    inner = host.main_pid()
    agent = host.health()
    assert agent is not None
    psutil.Process(host.m.host_pid(inner)).send_signal(signal.SIGKILL)
    wait_until(lambda: host.show("NRestarts")["NRestarts"] == "1", 30, "systemd's restart")
    wait_until(lambda: host.show("ActiveState")["ActiveState"] == "active", 30, "active")
    assert host.main_pid() != inner
    answered = host.wait_version("0.2.0")
    assert answered["pid"] != agent["pid"]  # the old agent went with the old launcher
    status = host.status()
    assert (status["current_version"], status["phase"]) == ("0.2.0", "committed")


def test_frozen_launcher_is_restarted_by_the_watchdog(host: Host) -> None:
    """SIGSTOP: no more WATCHDOG=1, so systemd aborts and restarts it (WatchdogSec=4 here)."""
    host.m.write(f"/etc/systemd/system/{UNIT}.d/watchdog.conf",
                 "[Service]\nWatchdogSec=4\nTimeoutAbortSec=10\n")
    host.m.run("systemctl", "daemon-reload")
    host.m.run("systemctl", "enable", "--now", UNIT)
    host.wait_version(SEED)
    inner = host.main_pid()
    psutil.Process(host.m.host_pid(inner)).send_signal(signal.SIGSTOP)
    host.wait_journal(r"Watchdog timeout", timeout=30)
    wait_until(lambda: host.show("NRestarts")["NRestarts"] == "1", 40, "watchdog restart")
    wait_until(lambda: host.show("ActiveState")["ActiveState"] == "active", 30, "active")
    assert host.main_pid() != inner
    assert "Failed with result 'watchdog'" in host.journal()
    host.wait_version(SEED)


def test_hardening_holds_in_the_booted_system(host: Host) -> None:
    """Inside the service's own namespaces nothing outside the state dir is writable, the
    agent has no capabilities and a seccomp filter, and systemd-analyze security inside the
    booted system gives the score the docs claim."""
    host.m.run("systemctl", "enable", "--now", UNIT)
    host.wait_version(SEED)
    main = host.m.host_pid(host.main_pid())
    uid = service_uid(host.m)

    def can_write(path: str) -> bool:
        probe = host.m.run("sh", "-c", f"echo x > {path} && rm -f {path}", pid=main,
                           user=uid, check=False)
        return probe.returncode == 0

    assert can_write("/var/lib/nginx-manager/probe")
    for outside in ("/etc/probe", "/opt/nginx-manager-agent/probe", "/usr/probe",
                    "/var/lib/probe", "/root/probe", "/home/probe", "/var/tmp/../probe"):
        assert not can_write(outside), outside
    assert can_write("/tmp/probe")  # PrivateTmp: its own, invisible to the machine
    host.m.run("sh", "-c", "echo x > /tmp/left", pid=main, user=uid)
    assert host.m.run("test", "-e", "/tmp/left", check=False).returncode == 1

    def cmdline(p: psutil.Process) -> list[str]:
        try:
            return p.cmdline()
        except psutil.NoSuchProcess:  # a short-lived helper (an update check) just ended
            return []

    agent = psutil.Process(main).children()
    agents = [p for p in agent if "run" in cmdline(p) and "--health-addr" in cmdline(p)]
    assert agents, [cmdline(p) for p in agent]
    status = Path(f"/proc/{agents[0].pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    assert int(fields["CapEff"].strip(), 16) == 0
    assert int(fields["CapBnd"].strip(), 16) == 0
    assert oct(int(host.m.run("stat", "-c", "%a", "/var/lib/nginx-manager").stdout, 8)) \
        == oct(0o700)

    out = host.m.run("systemd-analyze", "security", UNIT, "--no-pager", check=False).stdout
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert score is not None, out
    assert float(score.group(1)) <= 2.0
    assert float(score.group(1)) <= CLAIMED_SCORE, out
