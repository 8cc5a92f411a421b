"""The launcher's log lines: ``--log-format text`` (the default) or ``json``.

``json`` writes one object per line with stable keys: ``time`` (RFC 3339 UTC, milliseconds),
``level`` (``debug`` .. ``critical``), ``event``, ``message`` (the text line's words, as
they are), ``process`` (``launcher`` or ``worker``), ``logger``; then, where the event has
them, ``version``, ``reason`` and the other fields named in :data:`EVENTS`, and
``exception`` for a traceback. ``event`` is a dotted name for the events an operator acts
on (``update.found``, ``update.committed``, ``rollback``, ``check.failed`` ...) and the
logger's short name for the rest. Only the launcher's own lines change: the agent's output
passes through as it is. Every line is redacted first (``launcher.redact``). Standard
library only: the resident and the worker both use it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from launcher.redact import redact

# message template -> (event, names of its arguments, in order)
EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "launcher starting (pid %d, state %s, mode %s, platform %s)":
        ("launcher.start", ("pid", "state_dir", "mode", "platform")),
    "received %s: stopping": ("launcher.stop", ("signal",)),
    "Update found: %s. Synchronizing...": ("update.found", ("version",)),
    "update available: %s (%s)": ("check.update_available", ("version", "reason")),
    "no update: %s": ("check.no_update", ("reason",)),
    "manifest not modified": ("check.not_modified", ()),
    "check failed: %s": ("check.failed", ("reason",)),
    "check failed (%d in a row); the agent keeps running":
        ("check.failed_again", ("consecutive_failures",)),
    "next check in %.1fs": ("check.scheduled", ("delay_s",)),
    "staged %s (sha256 %s) as %s": ("update.staged", ("version", "sha256", "file")),
    "installed %s": ("update.installed", ("version",)),
    "installed seed binary %s as %s": ("update.seeded", ("file", "version")),
    "swapped in %s; %s kept as agent.old": ("update.swapped", ("version", "previous")),
    "update to %s committed after %.1fs healthy": ("update.committed",
                                                   ("version", "run_time_s")),
    "rolled back to %s: %s %s": ("rollback", ("version", "failed", "reason")),
    "cannot roll back from %s (%s): %s; keeping it": ("rollback.refused",
                                                      ("version", "reason", "why")),
    "agent %s %s after %.1fs": ("agent.exited", ("version", "reason", "ran_s")),
    "restarting agent %s in %.1fs (crash %d in a row)": ("agent.restart",
                                                         ("version", "delay_s", "crashes")),
    "started %s (pid %d): %s": ("process.started", ("name", "pid", "argv")),
    "nginx-manager-launcher: %s": ("launcher.fatal", ("reason",)),
}
LEVELS = {"WARNING": "warning", "WARN": "warning"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        template = getattr(record, "template", record.msg)
        event, names = EVENTS.get(template if isinstance(template, str) else "",
                                  (record.name.rpartition(".")[2], ()))
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": LEVELS.get(record.levelname, record.levelname.lower()),
            "event": event,
            "message": record.getMessage(),
            "process": self.process,
            "logger": record.name,
        }
        args = getattr(record, "fields", record.args)  # redacted ones, when redaction ran
        args = args if isinstance(args, tuple) else ()
        for name, value in zip(names, args, strict=False):
            obj.setdefault(name, value if isinstance(value, int | float) and not isinstance(
                value, bool) else redact(str(value)))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exception"] = redact(record.exc_text)
        return json.dumps(obj)


class UTCFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)


def formatter(log_format: str, process: str) -> logging.Formatter:
    """The formatter for ``--log-format`` in ``process`` (``launcher`` or ``worker``)."""
    if log_format == "json":
        return JsonFormatter(process)
    if process == "worker":
        return logging.Formatter("%(asctime)s launcher[worker] %(levelname)s %(message)s",
                                 datefmt="%Y-%m-%dT%H:%M:%S")
    return UTCFormatter("%(asctime)sZ launcher %(levelname)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
