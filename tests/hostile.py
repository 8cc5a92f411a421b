"""Helpers for the reliability tests: a quick launcher on script agents, invariants, probes.

The agents here are shell scripts (``exec sleep``) rather than real builds: they start in
milliseconds, so a test spends its time on the fault it is about, and "the running agent is
untouched" is checked the strict way — the same process, by pid, still alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from conftest import Launcher, script_agent, signing_args

SLEEPER = "exec sleep 100000"
PARTIAL = ".agent.partial-"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sleeper(dir_: Path, version: str, pad: int = 0) -> Path:
    """A script agent that runs until signalled; ``pad`` bytes of comment make it bigger."""
    path = script_agent(dir_ / f"agent-{version}", version, SLEEPER)
    if pad:
        with path.open("a") as f:
            f.write(("#" * 1023 + "\n") * (pad // 1024))
    return path


def crasher(dir_: Path, version: str) -> Path:
    return script_agent(dir_ / f"agent-{version}", version, "exit 1")


def manifest_for(version: str, url: str, binary: Path | bytes,
                 size: bool = True) -> bytes:
    data = binary if isinstance(binary, bytes) else binary.read_bytes()
    entry: dict[str, Any] = {"url": url, "sha256": hashlib.sha256(data).hexdigest()}
    if size:
        entry["size"] = len(data)
    return json.dumps({"version": version, "release_date": "2026-02-10T21:00:00Z",
                       "binaries": {"linux-amd64": entry, "linux-arm64": entry}}).encode()


def quick_args(manifest_url: str, seed: Path, *public_keys: Path, **over: str) -> list[str]:
    """Short windows, no jitter, no health URL (script agents do not serve one); signed with
    ``public_keys``, else explicitly unsigned."""
    opts = {
        "--manifest-url": manifest_url,
        "--poll-interval": "0.2",
        "--jitter": "0",
        "--health-window": "0.6",  # a crashing script exits inside it on a loaded host
        "--stop-grace": "2",
        "--download-deadline": "2",
        "--platform": "linux-amd64",
        "--seed-binary": str(seed),
        **over,
    }
    args = ["--allow-http", *signing_args(*public_keys)]
    for k, v in opts.items():
        if v:
            args += [k, v]
    return args


def start(lch: Launcher, args: list[str], version: str, timeout: float = 15.0) -> int:
    """Start the launcher and wait until agent ``version`` runs; returns the agent's pid."""
    lch.start(*args, agent_args=())
    return agent_pid(lch, version, timeout)


def agent_pid(lch: Launcher, version: str, timeout: float = 15.0) -> int:
    st = lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running"
                        and (s.get("child") or {}).get("version") == version
                        and (s.get("current") or {}).get("version") == version
                        and s.get("phase") == "committed",
                        timeout=timeout, what=f"agent {version} running, committed")
    pid = int(st["child"]["pid"])
    assert psutil.pid_exists(pid)
    return pid


def files_in_bin(lch: Launcher) -> list[str]:
    """What ``bin/`` holds, leaving out a cut download's partial (``.agent.partial-*`` and its
    record), which stays on purpose for the next check to resume (``launcher.partial``)."""
    return sorted(p.name for p in (lch.state_dir / "bin").iterdir()
                  if not p.name.startswith(PARTIAL))


def partials_in_bin(lch: Launcher) -> list[str]:
    return sorted(p.name for p in (lch.state_dir / "bin").iterdir()
                  if p.name.startswith(PARTIAL))


def assert_untouched(lch: Launcher, pid: int, version: str, error_words: str,
                     timeout: float = 20.0) -> dict[str, Any]:
    """A check failed with ``error_words`` in last_error; the same agent process runs on."""
    st = lch.wait_state(lambda s: error_words in (s.get("last_error") or ""),
                        timeout=timeout, what=f"last_error with {error_words!r}")
    assert st["current"]["version"] == version
    assert st["phase"] == "committed"
    assert st["bad"] == [], "a source failure never marks a build bad"
    assert st["child"]["pid"] == pid, "the agent was restarted"
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert lch.proc is not None and lch.proc.poll() is None, "the launcher died"
    return st


def wait_committed(lch: Launcher, version: str, timeout: float = 20.0) -> dict[str, Any]:
    st = lch.wait_state(lambda s: s.get("phase") == "committed"
                        and (s.get("current") or {}).get("version") == version
                        and (s.get("child") or {}).get("state") == "running"
                        and (s.get("child") or {}).get("version") == version,
                        timeout=timeout, what=f"{version} committed and running")
    return st


def workers(lch: Launcher) -> list[psutil.Process]:
    assert lch.proc is not None
    try:
        kids = psutil.Process(lch.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        with contextlib.suppress(psutil.Error):
            if "launcher.worker" in " ".join(p.cmdline()):
                out.append(p)
    return out


@dataclass
class RssSampler:
    """Samples the resident's RSS and the peak RSS of any worker, every ``period_s``."""

    pid: int
    period_s: float = 0.02
    resident: list[int] = field(default_factory=list)
    worker_peak: int = 0
    workers_seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        seen: set[int] = set()
        while not self._stop.wait(self.period_s):
            try:
                proc = psutil.Process(self.pid)
                self.resident.append(proc.memory_info().rss)
                kids = proc.children()
            except psutil.Error:
                return
            for kid in kids:
                with contextlib.suppress(psutil.Error):
                    if "launcher.worker" in " ".join(kid.cmdline()):
                        seen.add(kid.pid)
                        self.worker_peak = max(self.worker_peak, kid.memory_info().rss)
            self.workers_seen = len(seen)


class Relay:
    """A TCP relay to ``target_port`` that can be told to reset every new connection.

    ``mode = "reset"``: read the request, then close with SO_LINGER 0 (an RST, as a flaky
    middlebox does). ``mode = "pass"``: relay both ways.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "reset"
        self.resets = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.mode == "reset":
            with contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            self.resets += 1
            conn.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
        _pump(conn, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    src.close()


@contextlib.contextmanager
def trickled_request(sock: socket.socket, every_s: float) -> Iterator[None]:
    """A client that sends its request one byte every ``every_s`` and never completes it,
    from a thread, until the block ends (or the server cuts it)."""
    done = threading.Event()

    def trickle() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" * 4:
            if done.wait(every_s):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(every_s + 5)


def open_fds(pid: int) -> set[str]:
    """What the process's descriptors point at (``/proc/PID/fd``)."""
    out = set()
    base = Path(f"/proc/{pid}/fd")
    for fd in base.iterdir():
        with contextlib.suppress(OSError):
            out.add(f"{fd.name}->{(base / fd.name).readlink()}")
    return out


def zombies(pid: int) -> list[int]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        with contextlib.suppress(psutil.Error):
            if k.status() == psutil.STATUS_ZOMBIE:
                out.append(k.pid)
    return out
