"""Shared fixtures: real agent builds, a real update server, a real launcher process."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))

# packaging/ is a folder of scripts, not a package: imported through the path set above.
import build_agent  # noqa: E402
import release_tool  # noqa: E402

PLATFORMS = ROOT / "tests" / "platforms"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long variants")
    parser.addoption("--platforms", action="store_true",
                     help="run only the platform suite (tests/platforms: the Debian package, "
                          "a booted systemd, podman); the main run leaves it out")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The platform suite runs only with --platforms, and then alone; long variants
    (``@pytest.mark.slow``) are deselected, not skipped, unless --run-slow."""
    platforms = config.getoption("--platforms")
    other = [item for item in items if (PLATFORMS in item.path.parents) != platforms]
    if other:
        config.hook.pytest_deselected(items=other)
        left_out = set(other)
        items[:] = [item for item in items if item not in left_out]
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


def unavailable(why: str) -> None:
    """A tool or privilege a test needs is missing: fail under CI=true (a skipped test proves
    nothing, and CI installs everything), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: .ci/run must provide it)")
    pytest.skip(why)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``nginx-manager-launcher ARGS`` as a real process; its output and exit code."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096


def bind_over(path: Path, *, read_only: bool) -> None:
    """``path`` bind-mounted over itself, then made read-only (or read-write), with mount(2)
    itself: mount(8) would look the new mount up again in the mount table, which tests of
    another run may be changing at that instant."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = str(path).encode()
    flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if read_only else 0)
    for source, how in ((target, MS_BIND), (None, flags)):
        if libc.mount(source, target, None, how, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {path} (flags {how:#x}): {os.strerror(err)}")


def tmpfs_state(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``1m``) at ``tmp_path/state``, unmounted when the generator is
    closed (a fixture's teardown: after the launcher is gone)."""
    target = tmp_path / "state"
    target.mkdir()
    try:
        mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        unavailable(f"cannot mount a tmpfs here: {exc}")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``tmp_path/state``."""
    yield from tmpfs_state(tmp_path, "1m")


def agent_health(url: str) -> dict[str, Any] | None:
    """The agent's /healthz answer, or None while it does not answer (or is stopping)."""
    import http.client
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError, http.client.HTTPException):  # an agent stopped mid-answer
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The real agent artifact for a version, built once per session."""
    out = tmp_path_factory.mktemp("builds")
    cache: dict[str, Path] = {}

    def make(version: str) -> Path:
        if version not in cache:
            cache[version] = build_agent.build_agent(version, out / f"agent-{version}")
        return cache[version]

    return make


def script_agent(path: Path, version: str, body: str) -> Path:
    """A stand-in agent: ``--version`` prints ``version``; otherwise runs ``body`` (sh)."""
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo {version}; exit 0; fi\n'
                    f"{body}\n")
    path.chmod(0o755)
    return path


class UpdateServer:
    """``packaging/update_server.py`` as a real process on a loopback port."""

    def __init__(self, release_dir: Path) -> None:
        self.dir = release_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "packaging" / "update_server.py"), "--dir",
             str(release_dir), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"http://[\d.]+:(\d+)", line)
        assert match, f"update server did not start: {line!r}"
        self.port = int(match.group(1))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.manifest_url = f"{self.base_url}/version.json"

    def publish(self, version: str, binary: Path | None = None) -> dict[str, Any]:
        return release_tool.publish(version, self.dir, self.base_url, binary=binary)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UpdateServer]:
    srv = UpdateServer(tmp_path / "release")
    yield srv
    srv.stop()


class Launcher:
    """``nginx-manager-launcher run`` as a real process, with its log and journal at hand."""

    def __init__(self, state_dir: Path, log_path: Path, health_port: int) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.health_port = health_port
        self.health_url = f"http://127.0.0.1:{health_port}/healthz"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, agent_args: tuple[str, ...] | None = None,
              env: dict[str, str] | None = None) -> Launcher:
        if agent_args is None:
            agent_args = ("run", "--health-addr", f"127.0.0.1:{self.health_port}")
        cmd = [sys.executable, "-m", "launcher", "run", "--state-dir", str(self.state_dir),
               *args, "--", *agent_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=full_env,
                                     start_new_session=True)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> str:
        def found() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                if len(re.findall(pattern, self.log())) >= count:
                    return True
                raise AssertionError(f"launcher exited {self.proc.returncode} before "
                                     f"{pattern!r}:\n{self.log()}")
            return len(re.findall(pattern, self.log())) >= count

        try:
            wait_until(found, timeout, f"log line {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- launcher log ---\n{self.log()}") from None
        return self.log()

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0,
                   what: str = "state") -> dict[str, Any]:
        try:
            wait_until(lambda: predicate(self.state()), timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstate: {self.state()}\n--- log ---\n{self.log()}") \
                from None
        return self.state()

    def health(self) -> dict[str, Any] | None:
        return agent_health(self.health_url)

    def wait_healthy(self, version: str, timeout: float = 15.0) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            h = self.health()
            return h if h and h.get("version") == version else None

        try:
            result: dict[str, Any] = wait_until(ok, timeout, f"agent {version} healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None
        return result

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill_tree(self) -> None:
        """Power loss: SIGKILL the launcher and every descendant at once."""
        assert self.proc is not None
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(
                recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(10)
        psutil.wait_procs(family, timeout=5)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_tree()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    made: list[Launcher] = []
    port = free_port()

    def make(state_dir: Path | None = None) -> Launcher:
        lch = Launcher(state_dir or tmp_path / "state", tmp_path / f"launcher{len(made)}.log",
                       port)
        made.append(lch)
        return lch

    yield make
    for lch in made:
        lch.cleanup()


def fast_args(server: UpdateServer, launcher: Launcher, *public_keys: Path,
              **over: str) -> list[str]:
    """Launcher flags for tests: short intervals, no jitter, the agent's health URL; signed
    with ``public_keys``, else explicitly unsigned (``--allow-unsigned``)."""
    opts = {
        "--manifest-url": server.manifest_url,
        "--poll-interval": "0.3",
        "--jitter": "0",
        "--health-window": "1.5",
        "--stop-grace": "3",
        "--health-url": launcher.health_url,
        **over,
    }
    args = ["--allow-http", *signing_args(*public_keys)]
    for k, v in opts.items():
        if v:
            args += [k, v]
    return args


def signing_args(*public_keys: Path) -> list[str]:
    """``--public-key`` for each key, or ``--allow-unsigned`` when there is none."""
    if not public_keys:
        return ["--allow-unsigned"]
    return [arg for key in public_keys for arg in ("--public-key", str(key))]


@pytest.fixture(scope="session")
def ca() -> Any:
    """A test certificate authority (``trustme``); servers get certificates from it."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file, for ``--ca-file``."""
    path: Path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def https_args(launcher: Launcher, *source: str, ca_file: Path | None = None,
               public_keys: tuple[Path, ...] = (), **over: str) -> list[str]:
    """Launcher flags for https tests: like :func:`fast_args`, but without ``--allow-http``."""
    opts = {"--poll-interval": "0.3", "--jitter": "0", "--health-window": "1.5",
            "--stop-grace": "3", "--health-url": launcher.health_url, **over}
    args = [*source, *signing_args(*public_keys)]
    if ca_file is not None:
        args += ["--ca-file", str(ca_file)]
    for k, v in opts.items():
        if v:
            args += [k, v]
    return args
