"""What the agent finds of the local nginx: its version and whether its config tests clean.

:func:`probe_nginx` never raises: a missing, hanging or failing nginx is a finding.
"""

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class NginxReport:
    """The result of one probe; ``path`` is None when nginx is not on PATH."""

    path: str | None
    version: str | None = None
    config_ok: bool | None = None
    detail: str = ""


Runner = Callable[[list[str], float], tuple[int, str]]


def run_command(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """Run ``argv``; return its exit code and its combined output, stripped."""
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stdout.decode(errors="replace").strip()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def probe_nginx(
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = run_command,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> NginxReport:
    """Run ``nginx -v`` and ``nginx -t`` when nginx is on PATH."""
    path = which("nginx")
    if path is None:
        return NginxReport(path=None, detail="nginx not found on PATH")
    try:
        code, output = run([path, "-v"], timeout_s)
        version = _last_line(output) if code == 0 else None
        code, output = run([path, "-t"], timeout_s)
    except subprocess.TimeoutExpired:
        return NginxReport(path=path, detail=f"nginx timed out after {timeout_s:g}s")
    except OSError as exc:
        return NginxReport(path=path, detail=f"nginx could not be run: {exc}")
    detail = _last_line(output) or f"exit {code}"
    return NginxReport(path=path, version=version, config_ok=code == 0, detail=detail)
