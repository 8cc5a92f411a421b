"""``--log-format json``: every line the launcher writes (resident and worker) is one JSON
object with stable keys, through a real launcher's update; the agent's own lines pass
through as they are; text stays the default."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Launcher, UpdateServer, fast_args, run_cli

from launcher import logformat
from launcher.redact import RedactFilter

AGENT_LINE = re.compile(r"^\S+Z agent [A-Z]+ ")
KEYS = ("time", "level", "event", "message", "process", "logger")


def test_every_launcher_line_is_json(server: UpdateServer, launcher: Callable[..., Launcher],
                                     build: Callable[[str], Path]) -> None:
    """An install and an update: each launcher line parses, the seed's update line is the
    message of an ``update.found`` event with its version, and the agent's lines are the
    agent's own text."""
    server.publish("0.1.0", build("0.1.0"))
    lch = launcher()
    lch.start(*fast_args(server, lch), "--log-format", "json")
    lch.wait_healthy("0.1.0")
    lch.wait_state(lambda s: s.get("phase") == "committed")
    server.publish("0.1.1", build("0.1.1"))
    lch.wait_log(re.escape('"message": "Update found: 0.1.1. Synchronizing..."'))
    lch.wait_state(lambda s: s["phase"] == "committed" and s["current"]["version"] == "0.1.1",
                   what="0.1.1 committed")
    assert lch.stop() == 0
    records: list[dict[str, Any]] = []
    agent_lines = 0
    for line in lch.log().splitlines():
        if AGENT_LINE.match(line):
            agent_lines += 1
            continue
        record = json.loads(line)  # anything else is the launcher's, and JSON
        assert all(k in record for k in KEYS), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        records.append(record)
    assert agent_lines > 0
    events = {(r["event"], r.get("version")) for r in records}
    assert ("update.found", "0.1.1") in events
    assert ("update.committed", "0.1.1") in events
    assert ("launcher.start", None) in events
    found = next(r for r in records if r["event"] == "update.found" and r["version"] == "0.1.1")
    assert found["message"] == "Update found: 0.1.1. Synchronizing..."
    assert found["process"] == "worker" and found["level"] == "info"
    assert {r["process"] for r in records} == {"launcher", "worker"}


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom at https://user:pw@host/x?token=abc")
        except ValueError as e:
            exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord("launcher.worker", logging.WARNING, __file__, 1, msg, args,
                             exc_info)


def test_json_fields_redaction_and_tracebacks() -> None:
    """Fields named per event; URL credentials masked in the message and in a traceback,
    which stays inside the one line."""
    fmt = logformat.JsonFormatter("worker")
    rec = record("rolled back to %s: %s %s", "0.1.0", "0.1.1 (sha256 abc)", "agent exited 1")
    out = json.loads(fmt.format(rec))
    assert out["event"] == "rollback" and out["version"] == "0.1.0"
    assert out["reason"] == "agent exited 1" and out["level"] == "warning"
    rec = record("check failed: %s", "transport: cannot connect to https://u:secret@h/v",
                 exc=True)
    RedactFilter().filter(rec)
    line = fmt.format(rec)
    assert "\n" not in line and "secret" not in line and "pw@" not in line
    out = json.loads(line)
    assert out["event"] == "check.failed"
    assert "ValueError" in out["exception"]
    plain = json.loads(fmt.format(record("something else entirely")))
    assert plain["event"] == "worker" and "version" not in plain


def test_text_is_the_default() -> None:
    text = logformat.formatter("text", "launcher").format(record("installed %s", "1.0"))
    assert re.fullmatch(r"\S+Z launcher WARNING installed 1\.0", text)


def test_a_refused_start_says_why_in_json(tmp_path: Path) -> None:
    """A start refused after the settings are read (a state dir others can write) ends on
    one JSON line too, exit 2."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    r = run_cli("run", "--state-dir", str(state), "--allow-unsigned", "--manifest-url",
                "https://127.0.0.1:1/version.json", "--log-format", "json")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["event"] == "launcher.fatal" and "chmod go-w" in out["reason"]


def test_the_new_options_come_from_the_environment_too(tmp_path: Path) -> None:
    """Each new option is also ``NGINX_MANAGER_<KEY>``, like the others."""
    from launcher import settings

    cred = tmp_path / "cred"
    cred.write_text("u:password\n")
    cred.chmod(0o600)
    s = settings.load({"platform": "linux-amd64"}, environ={
        "NGINX_MANAGER_LOG_FORMAT": "json", "NGINX_MANAGER_METRICS_FILE": str(tmp_path / "m"),
        "NGINX_MANAGER_DISK_MARGIN": "4096", "NGINX_MANAGER_PROXY": "http://127.0.0.1:3128",
        "NGINX_MANAGER_PROXY_CREDENTIALS": str(cred)})
    assert (s.log_format, s.metrics_file, s.disk_margin_bytes, s.proxy,
            s.proxy_credentials) == ("json", tmp_path / "m", 4096, "http://127.0.0.1:3128",
                                     cred)
