"""The shipped systemd unit: accepted by systemd's own parser, sandboxed, and as the design says.

``systemd-analyze verify`` exits 0 on unknown keys and bad values unless it is given
``--recursive-errors=``; with ``=yes`` any warning fails it, for our unit *and* for every
host unit it loads. What ``=yes`` pulls in, found on Debian 12 / systemd 252:

- our unit's default dependencies (sysinit.target, basic.target, shutdown.target), its
  After=/Wants= network-online.target and their transitive closure, from the host's
  /lib/systemd/system. They all come from the ``systemd`` package, the same package as
  ``systemd-analyze``, and they verify cleanly: exit 0, no output. Some of them name system
  calls libseccomp does not know (riscv_hwprobe, uretprobe); that is logged at debug level
  only and does not fail the check.
- with no host unit tree at all (``SYSTEMD_UNIT_PATH`` pointed at an empty directory) the
  check fails with "Unit sysinit.target not found": not the project's fault, so the test
  runs against the host tree and the ``systemd`` package is a CI requirement.
- the unit's own directory is searched first (so a drop-in in ``tmp_path/<unit>.d/`` is
  verified with it), but so are /etc/systemd/system and /run/systemd/system: a drop-in for
  nginx-manager-agent.service installed on the test host would be merged into the copy.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import unavailable

from launcher.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "nginx-manager-agent.service"
DROP_IN = ROOT / "systemd" / "override.conf.example"
LAUNCHER = "/usr/bin/nginx-manager-launcher"
# Measured 1.1 with systemd 252, offline (`systemd-analyze security --offline=yes`) and inside
# the booted system (tests/platforms/test_systemd.py). Issue 10 asks for at most 2.0; 1.1 is
# the claim, so losing any directive worth a tenth fails. --threshold takes tenths.
SECURITY_THRESHOLD = 11
PROBLEMS = re.compile(r"unknown|failed|invalid|ignoring|not found|refusing|deprecated", re.I)


def systemd_analyze() -> str:
    """The tool's path; missing fails the test under CI=true and skips it elsewhere."""
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is missing: install the systemd package")
    assert path is not None
    return path


def templated(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit, same file name, whose ExecStart= names a stub that exists."""
    stub = tmp_path / "nginx-manager-launcher"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    source = UNIT.read_text() if text is None else text
    assert source.count(f"ExecStart={LAUNCHER} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(source.replace(f"ExecStart={LAUNCHER} ", f"ExecStart={stub} "))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--recursive-errors=yes", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=unit.parent,
    )


def parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#", ";"), delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """systemd's parser accepts every line of the unit, and every host unit it pulls in."""
    result = verify(templated(tmp_path))
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if UNIT.name in line and PROBLEMS.search(line)]
    assert ours == []
    assert result.returncode == 0, output


def test_unit_verifies_with_the_drop_in_example(tmp_path: Path) -> None:
    """The drop-in example merges into the unit without a warning."""
    unit = templated(tmp_path)
    drop_ins = tmp_path / f"{UNIT.name}.d"
    drop_ins.mkdir()
    shutil.copy(DROP_IN, drop_ins / "override.conf")
    result = verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("good", "bad"),
    [("KillMode=mixed", "KillMode=mixd"), ("KillMode=mixed", "KillMod=mixed")],
)
def test_verify_catches_a_typo(tmp_path: Path, good: str, bad: str) -> None:
    """Negative control: a bad value or an unknown key makes the same check fail."""
    text = UNIT.read_text()
    assert good in text
    result = verify(templated(tmp_path, text.replace(good, bad)))
    assert result.returncode != 0
    assert UNIT.name in result.stdout + result.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    """The offline sandboxing score stays at or below the measured one."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", f"--threshold={SECURITY_THRESHOLD}",
         "--no-pager", str(templated(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {score.group(1)} > {SECURITY_THRESHOLD / 10}"


def test_unit_has_the_directives_the_design_requires() -> None:
    """The choices DESIGN.md and the supervision research depend on are all there."""
    unit = parse(UNIT)
    service, section = unit["Service"], unit["Unit"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "mixed",
        "Restart": "always",
        "RestartPreventExitStatus": "2",
        "SuccessExitStatus": "143",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "nginx-manager",
        "ReadWritePaths": "/var/lib/nginx-manager",
        "User": "nginx-manager",
        "CapabilityBoundingSet": "",
        "Environment": "NGINX_MANAGER_STATE_DIR=/var/lib/nginx-manager",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "PrivateDevices": "yes",
        "ProtectClock": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RemoveIPC": "yes",
        "PrivateUsers": "yes",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["ExecStart"] == f"{LAUNCHER} run --config /etc/nginx-manager/launcher.toml"
    assert "network-online.target" in section["After"]
    assert "network-online.target" in section["Wants"]
    assert "DynamicUser" not in service
    assert "NoExecPaths" not in service  # the agent executes from the state directory
    assert "MemoryDenyWriteExecute" not in service
    assert "ProcSubset" not in service  # psutil needs /proc/stat (seen on a booted systemd)
    filters = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
               if line.startswith("SystemCallFilter=")]
    assert filters == ["@system-service", "~@privileged @resources"]


def test_stop_timeout_exceeds_the_launcher_stop_grace() -> None:
    """systemd must not SIGKILL the launcher while it is still giving the agent its grace."""
    timeout = float(parse(UNIT)["Service"]["TimeoutStopSec"])
    assert Settings().stop_grace_s + 10 <= timeout


def test_watchdog_leaves_room_for_pings() -> None:
    """WatchdogSec= is long enough for a ping every half interval from a busy loop."""
    assert float(parse(UNIT)["Service"]["WatchdogSec"]) >= 30


def test_launcher_never_calls_systemctl_or_sudo() -> None:
    """The launcher restarts its own child: no systemctl anywhere in its sources, and sudo
    never as a program to run (reading ``SUDO_USER``, to journal who asked, is not that)."""
    pattern = re.compile(r"\bsystemctl\b|[\"'](/usr/bin/)?sudo\b|\bsudo\s+-")
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted((ROOT / "launcher").rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


SOCKET_UNIT = ROOT / "systemd" / "nginx-manager-agent.socket"


def test_socket_unit_verifies_with_the_service(tmp_path: Path) -> None:
    """The socket unit (socket activation: the launcher hands systemd's socket on) is
    accepted by systemd's parser together with the service it names."""
    templated(tmp_path)
    copy = tmp_path / SOCKET_UNIT.name
    shutil.copy(SOCKET_UNIT, copy)
    result = verify(copy)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines()
            if (SOCKET_UNIT.name in line or UNIT.name in line) and PROBLEMS.search(line)]
    assert ours == []
    assert result.returncode == 0, output


def test_socket_unit_typo_is_caught(tmp_path: Path) -> None:
    """Negative control for the socket unit."""
    templated(tmp_path)
    copy = tmp_path / SOCKET_UNIT.name
    copy.write_text(SOCKET_UNIT.read_text().replace("ListenStream=", "ListenStrem="))
    result = verify(copy)
    assert result.returncode != 0
    assert SOCKET_UNIT.name in result.stdout + result.stderr


def test_socket_unit_feeds_the_service_one_named_stream_socket() -> None:
    socket_section = parse(SOCKET_UNIT)["Socket"]
    assert socket_section["Service"] == UNIT.name
    assert socket_section["ListenStream"] == "127.0.0.1:8091"
    assert socket_section["FileDescriptorName"] == "health"
    assert int(socket_section["Backlog"]) >= 128
    assert socket_section.get("Accept", "no") == "no"
