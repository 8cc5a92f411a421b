"""Our own short-lived Python programs (the worker, the watcher, ``oneshot``), started isolated.

``python -m`` puts the working directory first on ``sys.path`` and honours ``PYTHON*``
variables, so a helper started that way from a writable directory imports whatever was
planted there. Helpers run as ``python -I`` (no current directory, no user site, no
``PYTHON*`` variables) with the launcher package's own directory put first explicitly.
Each one arms a parent-death signal before anything else, so it dies with the launcher
even when the launcher is killed alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.child import agent_environ, run_capture
from launcher.errors import HostError
from launcher.faults import FAULT_ENV
from launcher.reaper import Reaper

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4  # 0: the helper's /proc files (environ, fd, mem) are root's only

# Runs before the helper's module: leave the launcher's working directory for /, lower its
# CPU priority when asked and allowed (before its imports, most of its CPU), die with the
# parent (checked after arming, since the parent may have died first), then run the module
# as __main__.
_BOOT = (
    "import ctypes,os,runpy,signal,sys;"
    "os.chdir('/')\n"
    "{nice}"
    "p=int(sys.argv.pop(1));"
    "ctypes.CDLL(None).prctl({pdeath},signal.SIGKILL,0,0,0);"
    "os.getppid()==p or os._exit(1);"
    "ctypes.CDLL(None).prctl({dumpable},0,0,0,0);"
    "sys.path.insert(0,{root!r});"
    "m=sys.argv.pop(1);sys.argv[0]=m;"
    "runpy.run_module(m,run_name='__main__',alter_sys=True)"
)


def argv(module: str, *args: str, parent: int, nice: int = 0) -> list[str]:
    """``python -I -c BOOT PARENT_PID MODULE ARGS...``; ``nice``: added to its niceness."""
    # Lowering the priority is best effort: the systemd unit's seccomp filter (@resources)
    # refuses setpriority, even nice(0), and there the helper runs at the launcher's.
    lower = f"try:os.nice({int(nice)})\nexcept OSError:pass\n" if nice else ""
    boot = _BOOT.format(pdeath=PR_SET_PDEATHSIG, dumpable=PR_SET_DUMPABLE, root=PACKAGE_ROOT,
                        nice=lower)
    return [sys.executable, "-I", "-c", boot, str(parent), module, *args]


def shown(module: str, *args: str) -> str:
    """How a helper's command line is logged (the bootstrap is the same every time)."""
    return " ".join([sys.executable, "-I", "-m", module, *args])


def environ(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a helper that needs no credentials (``oneshot``, the watcher):
    without systemd's per-process variables, the launcher's settings or source tokens."""
    return agent_environ(base)


def worker_environ(base: Mapping[str, str]) -> dict[str, str]:
    """The update check's environment: no source token and no settings variables (a URL in
    one may carry credentials); both reach the worker in its request, on stdin. Only the
    test-only fault point is kept."""
    env = agent_environ(base)
    if FAULT_ENV in base:
        env[FAULT_ENV] = base[FAULT_ENV]
    return env


def shas(paths: Sequence[Path], reaper: Reaper, env: Mapping[str, str],
         parent: int) -> list[str | None]:
    """sha256 of files (None: missing), in one short-lived process (``launcher.oneshot``)."""
    code, out = run_capture(argv("launcher.oneshot", "sha256", *map(str, paths),
                                 parent=parent), reaper, timeout_s=120.0, env=environ(env))
    digests = out.split()
    if code != 0 or len(digests) != len(paths) or any(
            d != "-" and len(d) != 64 for d in digests):
        raise HostError(f"cannot hash {', '.join(map(str, paths))}: the helper exited {code}")
    return [None if d == "-" else d for d in digests]


def compare(a: str, b: str, reaper: Reaper, env: Mapping[str, str],
            parent: int) -> int | None:
    """Version order (-1, 0, 1) through ``launcher.oneshot``; None when not comparable."""
    code, out = run_capture(argv("launcher.oneshot", "compare", a, b, parent=parent), reaper,
                            env=environ(env))
    if code != 0:
        return None
    try:
        return int(out.strip())
    except ValueError:
        return None
