"""Preflight: the staged build must run and print the version the manifest promised.

Runs ``<path> --version`` in a clean, minimal environment with its own session (so a
timeout kills the whole group), reads at most ``max_output_bytes`` of stdout and a little
stderr, and compares the stripped output with the expected version exactly (the whole
output, or one word of its first line: see :func:`prints_version`). This runs in the
short-lived worker, never in the resident, so owning a ``Popen`` and its ``waitpid`` here is
safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from launcher.errors import PreflightError
from launcher.reaper import signal_name

logger = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 4096
_STDERR_KEEP_BYTES = 2048
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def minimal_env() -> dict[str, str]:
    """PATH (the launcher's, or a standard one) and a C locale; nothing else leaks in."""
    return {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LC_ALL": "C.UTF-8"}


def preflight(
    path: Path,
    expected_version: str,
    *,
    timeout_s: float = 10.0,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    env: Mapping[str, str] | None = None,
) -> None:
    """Raise PreflightError unless ``path --version`` exits 0 printing ``expected_version``."""
    command = f"{path} --version"
    if not path.is_file():
        raise PreflightError(f"preflight: {path} does not exist or is not a file")
    if not os.access(path, os.X_OK):
        raise PreflightError(f"preflight: {path} is not executable")
    try:
        process = subprocess.Popen(
            [str(path), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else minimal_env(),
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        raise PreflightError(f"preflight: cannot run {path}: {exc.strerror or exc}") from exc
    try:
        stdout, stderr, status = _collect(process, timeout_s, max_output_bytes)
    finally:
        _kill_group(process)
    if status is None:
        raise PreflightError(f"preflight: {command} timed out after {timeout_s:g}s")
    if len(stdout) > max_output_bytes:
        raise PreflightError(f"preflight: {command} printed more than {max_output_bytes} bytes")
    if status != 0:
        raise PreflightError(f"preflight: {command} {_describe_status(status)}{_tail(stderr)}")
    printed = stdout.decode("utf-8", errors="replace").strip()
    if not prints_version(printed, expected_version):
        raise PreflightError(
            f"preflight: {command} printed {printed[:200]!r}, expected {expected_version!r}"
        )
    logger.info("preflight passed: %s prints %s", path, printed)


def prints_version(printed: str, expected: str) -> bool:
    """Whether ``--version`` output names exactly ``expected``: the whole output, or one
    word of its first line, with or without a leading ``v``, as native programs print it
    (``docker-registry github.com/docker/distribution 2.8.2+ds1``, ``v3.46.3+bea5943``).
    The comparison is of strings: ``1.0`` is not ``1.0.0``, and ``3.46.3`` is not
    ``3.46.3+bea5943``, whose local part names the build."""
    if printed == expected:
        return True
    first = printed.splitlines()[0] if printed else ""
    return any(word.removeprefix("v") == expected for word in first.split())


def _collect(
    process: subprocess.Popen[bytes], timeout_s: float, max_output_bytes: int
) -> tuple[bytes, bytes, int | None]:
    """Read both pipes until EOF, the stdout cap or the deadline; then the exit status.

    The status is None on timeout. Stops reading as soon as stdout exceeds its cap.
    """
    assert process.stdout is not None  # set by PIPE above
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    stdout = bytearray()
    stderr = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, stdout)
        selector.register(process.stderr, selectors.EVENT_READ, stderr)
        while selector.get_map() and len(stdout) <= max_output_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(stdout), bytes(stderr), None
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 4096)
                buffer: bytearray = key.data
                if not data:
                    selector.unregister(key.fileobj)
                elif buffer is stdout or len(buffer) < _STDERR_KEEP_BYTES:
                    buffer += data
    if len(stdout) > max_output_bytes:
        return bytes(stdout), bytes(stderr), 0
    try:
        status = process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return bytes(stdout), bytes(stderr), None
    return bytes(stdout), bytes(stderr), status


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of the session (grandchildren included) and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _describe_status(status: int) -> str:
    if status < 0:
        return f"was killed by {signal_name(-status)}"
    return f"exited {status}"


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", errors="replace").strip().splitlines()
    return f": {lines[-1][:200]}" if lines else ""
