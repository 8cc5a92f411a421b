"""Credentials in a URL (``user:password@``, query secrets) never reach ``last_error``, the
worker's result line, ``state.json``, ``status`` or a log line: a real launcher against a real
server, with secrets in the manifest URL and in the binary URL it names."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Launcher
from hostile import agent_pid, assert_untouched, quick_args, sleeper
from release_server import ReleaseServer, Route

from launcher.errors import TransportError
from launcher.redact import redact

SECRETS = ("s3cret", "abc123", "hunter2")


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}:\n{text}"


def test_redact_masks_userinfo_and_every_query_value() -> None:
    text = ("request to https://user:s3cret@h.example:8443/v.json?sig=abc123&x=1#frag failed; "
            "see 'http://h/bin?token=hunter2'")
    assert redact(text) == ("request to https://***@h.example:8443/v.json?sig=***&x=***#*** "
                            "failed; see 'http://h/bin?token=***'")
    assert redact("no URL here: user:s3cret") == "no URL here: user:s3cret"
    assert redact("GET https://u:s3cret@[fd00::1]:8443/v.json?token=hunter2 failed") == \
        "GET https://***@[fd00::1]:8443/v.json?token=*** failed"
    assert redact("(see https://h/p?token=hunter2)") == "(see https://h/p?token=***)"
    error = TransportError("cannot connect to https://u:s3cret@h/p?token=hunter2: refused")
    assert_clean(error.describe(), "describe()")
    assert_clean(str(error), "str()")


def test_secrets_in_urls_stay_out_of_state_status_and_logs(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    with ReleaseServer() as srv:
        path = "/version.json?sig=abc123"
        srv.publish(path, Route(status=500))
        url = srv.url(path).replace("http://", "http://user:s3cret@")
        lch = launcher()
        lch.start(*quick_args(url, sleeper(tmp_path, "0.1.0")), agent_args=())
        pid = agent_pid(lch, "0.1.0")
        st = assert_untouched(lch, pid, "0.1.0", "HTTP 500")
        assert "http://***@127.0.0.1" in st["last_error"] and "sig=***" in st["last_error"]
        # Now a manifest whose binary URL carries a token, and a checksum that fails.
        binary = sleeper(tmp_path, "0.2.0").read_bytes()
        srv.publish("/bin/agent?token=hunter2", Route(body=binary))
        entry = {"url": srv.url("/bin/agent?token=hunter2"),
                 "sha256": hashlib.sha256(b"other").hexdigest()}
        srv.publish(path, Route(body=json.dumps(
            {"version": "0.2.0", "binaries": {"linux-amd64": entry}}).encode()))
        st = assert_untouched(lch, pid, "0.1.0", "sha256: sha256 mismatch for")
        assert "/bin/agent?token=***" in st["last_error"]
        assert lch.stop() == 0
        check = subprocess.run([sys.executable, "-m", "launcher", "check", "--json",
                                *quick_args(url, sleeper(tmp_path, "0.1.0"))[:-2]],
                               capture_output=True, text=True, cwd=ROOT, timeout=60,
                               check=False)
    assert any(r.headers.get("Authorization", "").startswith("Basic ")
               for r in srv.requests), "the credentials were still used, as basic auth"
    assert_clean((lch.state_dir / "state.json").read_text(), "state.json")
    assert_clean(lch.log(), "the launcher's log")
    for args in (["status"], ["status", "--json"]):
        out = subprocess.run([sys.executable, "-m", "launcher", *args, "--state-dir",
                              str(lch.state_dir)], capture_output=True, text=True, cwd=ROOT,
                             timeout=60, check=True)
        assert_clean(out.stdout + out.stderr, " ".join(args))
    assert check.returncode == 0, check
    assert_clean(check.stdout + check.stderr, "check --json")


def test_a_traceback_in_a_log_line_is_redacted_too() -> None:
    """A crash logged with its traceback quotes the exception's message, URL included."""
    import io
    import logging

    from launcher.redact import RedactFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError("GET https://u:s3cret@h/v.json?token=hunter2 broke")
        except RuntimeError:
            log.exception("crashed at %s", "https://h/x?sig=abc123")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "RuntimeError: GET https://***@h/v.json?token=*** broke" in text
    assert "crashed at https://h/x?sig=***" in text
    assert_clean(text, "a logged traceback")


def test_userinfo_with_quotes_and_parentheses_is_masked() -> None:
    """RFC 3986 lets userinfo hold sub-delims: ( ) ' and the like. (Found by review.)"""
    from launcher.redact import redact

    for url in ("https://user:s3c(ret@host/v.json", "https://user:pa'ss@host/v.json",
                "http://user:p)a[ss@127.0.0.1:8080/v.json"):
        out = redact(f"GET {url} failed: HTTP 500")
        assert "s3c" not in out and "pa'ss" not in out and "p)a" not in out, out
        assert "***@" in out


@pytest.mark.parametrize("password", ["s3cr/etpw", "s3cr#etpw", "s3cr?etpw"])
def test_a_password_with_an_unencoded_delimiter_is_masked(password: str) -> None:
    """Review: '/', '#' or '?' in a password ended the authority for urlsplit, so the
    password's start was shown."""
    text = f"--proxy env: HTTPS_PROXY 'http://user:{password}@proxy:3128' is not valid"
    cleaned = redact(text)
    assert "s3cr" not in cleaned and "etpw" not in cleaned, cleaned
    assert "proxy:3128" in cleaned


def test_json_log_fields_survive_redaction() -> None:
    """Review: redaction dropped a record's arguments, so JSON lines lost ``reason``."""
    import logging

    from launcher.logformat import JsonFormatter
    from launcher.redact import RedactFilter

    record = logging.LogRecord("launcher.worker", logging.ERROR, __file__, 1,
                               "check failed: %s", ("transport: https://h/v.json?sig=abc",), None)
    assert RedactFilter().filter(record)
    line = json.loads(JsonFormatter("worker").format(record))
    assert "abc" not in json.dumps(line)
    assert line.get("reason", "").startswith("transport: https://h/v.json?sig="), line
