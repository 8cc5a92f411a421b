"""A Debian 12 system booted with ``systemd-nspawn``, driven from outside with ``nsenter``.

    with Machine.boot(copy_of_root, log) as m:
        m.run("systemctl", "is-system-running")
        m.show("nginx-manager-agent", "MainPID", "NRestarts")   # {"MainPID": "123", ...}

The machine shares the host's network (no ``--private-network``), so an update server on the
host's 127.0.0.1 is reachable from inside, and is not registered with machined (this host has
no system bus): ``--register=no --keep-unit``. Its processes are real processes of this host,
so their pids are visible here too; :meth:`host_pid` translates.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
       "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


class Machine:
    def __init__(self, root: Path, proc: subprocess.Popen[bytes], leader: int) -> None:
        self.root = root
        self.proc = proc
        self.leader = leader  # the container's PID 1 (systemd), as seen from the host

    @classmethod
    @contextlib.contextmanager
    def boot(cls, root: Path, log: Path, timeout: float = 60.0) -> Iterator[Machine]:
        Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(root), "--boot", "--register=no",
                 "--keep-unit", "--console=passive"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        machine: Machine | None = None
        try:
            machine = cls(root, proc, cls._leader(proc, log, timeout))
            machine.wait_running(timeout)
            yield machine
        finally:
            if machine is not None:
                machine.poweroff()
            elif proc.poll() is None:
                proc.kill()
                proc.wait(10)

    @staticmethod
    def _leader(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {proc.returncode}:\n"
                                     f"{log.read_text(errors='replace')}")
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(proc.pid).children():
                    if child.name() == "systemd":
                        return child.pid
            time.sleep(0.05)
        raise AssertionError("the container's systemd did not appear")

    def wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            # Right after the leader appears, nsenter may still race its namespace set-up.
            result = self.run("timeout", str(int(timeout)), "systemctl", "is-system-running",
                              "--wait", check=False)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        assert state == "running", (
            f"system is {state!r}:\n{self.run('systemctl', '--failed', check=False).stdout}")

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0,
            user: int | None = None, pid: int | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside the machine (or inside the namespaces of its process ``pid``, a
        host pid), as root or as ``user``."""
        enter = ["nsenter", "-t", str(pid or self.leader), "-a"]
        if user is not None:
            enter += ["-S", str(user), "-G", str(user)]
        result = subprocess.run([*enter, *ENV, *cmd], capture_output=True, text=True,
                                timeout=timeout, check=False, input=input_text)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} exited {result.returncode}:\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def host_pid(self, inner: int) -> int:
        """The host pid of the process that is ``inner`` in the machine's pid namespace."""
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, OSError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                for line in status.splitlines():
                    if line.startswith("NSpid:"):
                        pids = line.split()[1:]
                        if len(pids) >= 2 and int(pids[-1]) == inner and self._inside(proc.pid):
                            return proc.pid
        raise AssertionError(f"no host process for pid {inner} in the machine")

    def processes(self, uid: int | None = None) -> list[psutil.Process]:
        """The machine's processes (as host processes), only ``uid``'s if given."""
        found = []
        for proc in psutil.process_iter(["uids"]):
            with contextlib.suppress(psutil.NoSuchProcess):
                if self._inside(proc.pid) and (uid is None or proc.info["uids"].real == uid):
                    found.append(proc)
        return found

    def _inside(self, pid: int) -> bool:
        try:
            return (Path(f"/proc/{pid}/ns/pid").readlink()
                    == Path(f"/proc/{self.leader}/ns/pid").readlink())
        except OSError:
            return False

    def poweroff(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn: an orderly shutdown of the machine
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
