"""Power-loss fault points, for tests only.

``NGINX_MANAGER_FAULT_POINT=<point>`` makes the launcher's whole process tree die with
SIGKILL when it reaches that point of an update or a rollback, as a power loss would; a
restarted launcher must then come back to a consistent state. Points: ``downloaded`` (in
the worker), ``staged``, ``swap.old_linked``, ``swap.renamed``, ``swapped``,
``trial.started``, ``trial.passed``, ``committed``, ``rollback.journaled``,
``rollback.renamed``. Unset (always, outside tests), nothing here does anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

FAULT_ENV = "NGINX_MANAGER_FAULT_POINT"
FaultHook = Callable[[str], None]


def resident_hook(environ: Mapping[str, str]) -> FaultHook | None:
    """The resident's hook: at the armed point, kill every descendant, then itself."""
    wanted = environ.get(FAULT_ENV)
    if not wanted:
        return None

    def hook(point: str) -> None:
        if point != wanted:
            return
        log.warning("fault point %s reached: killing the launcher and its children", point)
        import psutil  # the resident has it loaded already; the worker only here

        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # PID 1 of a namespace ignores its own SIGKILL

    return hook


def worker_fault(point: str) -> None:
    """The worker's hook: at the armed point, kill the resident's whole tree.

    A namespace's init cannot be SIGKILLed from inside it: as PID 1's child the worker hands
    the point to the resident in its result line instead, and the resident's own hook ends
    the namespace (it exits, and the kernel kills the rest).
    """
    if os.environ.get(FAULT_ENV) != point:
        return
    import psutil  # not on every check: only a test's armed point needs it

    resident = psutil.Process(os.getppid())
    for proc in resident.children(recursive=True):
        if proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()
    if resident.pid == 1:
        sys.stdout.write(json.dumps({"outcome": "fault", "point": point}) + "\n")
        sys.stdout.flush()
        os._exit(137)
    resident.kill()
    os.kill(os.getpid(), signal.SIGKILL)
