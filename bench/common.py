"""Shared plumbing for the benchmarks: scratch space, nginx, builds, process figures.

Everything runs on loopback. Servers and launchers are started as real processes and
stopped by their own pid. Figures are reported as ``median (min-max, n)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = Path(sys.executable)
sys.path.insert(0, str(ROOT / "packaging"))
sys.path.insert(0, str(ROOT))

import build_agent  # noqa: E402  (packaging/ is a folder of scripts)
import release_tool  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Figure:
    """One printed line: what, value, reference in the same run, target, verdict."""

    name: str
    value: str
    reference: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def scratch(name: str) -> Path:
    base = Path(os.environ.get("BENCH_SCRATCH", tempfile.gettempdir())) / "nma-bench"
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summary(values: Sequence[float], unit: str, fmt: str = ".1f") -> str:
    """``median (min-max, n=N) unit``."""
    if not values:
        return "no samples"
    return (f"{med(values):{fmt}} {unit} ({min(values):{fmt}}-{max(values):{fmt}}, "
            f"n={len(values)})")


def http_get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return bytes(resp.read())
    except OSError:
        return None


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def health_version(url: str) -> str | None:
    body = http_get(url)
    if body is None:
        return None
    try:
        return str(json.loads(body)["version"])
    except (ValueError, KeyError):
        return None


def build(version: str, out_dir: Path) -> Path:
    """The real agent artifact, its shebang naming this venv's interpreter.

    The default shebang is ``/usr/bin/env python3``, which on this machine is a pyenv shim
    (~90 ms of bash per start); a host runs its system python3, so the bench names one
    interpreter explicitly and the coldstart bench reports the shim separately.
    """
    return build_agent.build_agent(version, out_dir / f"agent-{version}", python=str(VENV_PY))


def crashing_build(version: str, out_dir: Path, stamp: Path) -> Path:
    """A build that passes the preflight (``--version``) and crashes at start.

    Just before it exits 3 it writes ``time.monotonic()`` (one clock for every process on
    the host) to ``stamp``: the instant of the crash.
    """
    path = out_dir / f"agent-{version}-crash"
    code = (f"import time; open({str(stamp)!r}, 'w').write(repr(time.monotonic())); "
            "raise SystemExit(3)")
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo {version}; exit 0; fi\n'
                    f'exec {VENV_PY} -S -c "{code}"\n')
    path.chmod(0o755)
    return path


def publish(version: str, release_dir: Path, base_url: str, binary: Path) -> dict[str, Any]:
    return release_tool.publish(version, release_dir, base_url, binary=binary)


def stop_proc(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Nginx:
    """A private nginx (``daemon off``, one worker) serving ``root`` on loopback ports.

    ``servers`` maps a name to extra directives for one ``server`` block; each gets its own
    port (``self.ports[name]``). Access log format: ``$status $request_length $bytes_sent``.
    """

    def __init__(self, workdir: Path, root: Path, servers: dict[str, str]) -> None:
        self.dir = workdir
        self.ports = {name: free_port() for name in servers}
        blocks = "\n".join(
            f"  server {{ listen 127.0.0.1:{self.ports[n]}; root {root}; {extra} }}"
            for n, extra in servers.items())
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.access_log = workdir / "logs" / "access.log"
        conf = workdir / "nginx.conf"
        tmp = workdir / "scratch"
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  types {{ application/json json; application/octet-stream bin; }}
  default_type application/octet-stream;
  sendfile on; tcp_nopush on;
  client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  log_format wire '$status $request_length $bytes_sent';
  access_log {self.access_log} wire;
{blocks}
}}
""")
        tmp.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([NGINX, "-p", str(workdir), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in self.ports.values():
                wait_for(lambda p=port: _connects(p), 10, f"nginx on port {port}")
        except BaseException:
            self.stop()
            raise

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/{path.lstrip('/')}"

    def stop(self) -> None:
        stop_proc(self.proc)


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def nginx(workdir: Path, root: Path, servers: dict[str, str]) -> Iterator[Nginx]:
    srv = Nginx(workdir, root, servers)
    try:
        yield srv
    finally:
        srv.stop()


# ---- per-process figures from /proc -------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wakeups(pid: int) -> int:
    """Voluntary + involuntary context switches summed over every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all threads) in seconds, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def sched_ns(pid: int) -> int:
    """CPU time on the clock (ns) from /proc/PID/schedstat, summed over threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def env_with_python3() -> dict[str, str]:
    """The environment for launchers and agents: ``python3`` on PATH is this venv's."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_PY.parent}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
