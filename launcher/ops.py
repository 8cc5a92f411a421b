"""The operator's options in force, as ``status`` shows them: the proxy (never its
credentials), the metrics file, the log format.

The resident journals :func:`record` at start and after a config reload (``status``
reads only the journal). Standard library only: the resident uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.redact import redact_url
from launcher.settings import Settings

PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


def proxy_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables set in ``env``, by their upper-case names (the lower-case
    spelling wins where both are set, as in curl)."""
    found = {}
    for name in PROXY_ENV:
        value = env.get(name.lower(), env.get(name))
        if value:
            found[name] = value
    return found


def describe_proxy(s: Settings, env: Mapping[str, str]) -> str | None:
    """``http://proxy:3128``, ``env (HTTPS_PROXY=http://***@proxy:3128, NO_PROXY=...)``, or
    None (direct), with where the credentials come from: never the credentials."""
    if not s.proxy:
        return None
    if s.proxy != "env":
        shown = redact_url(s.proxy)
    else:
        found = proxy_environment(env)
        shown = "env (" + ", ".join(
            f"{name}={value if name == 'NO_PROXY' else redact_url(_with_scheme(value))}"
            for name, value in found.items()) + ")" if found else "env (none set: direct)"
    if s.proxy_credentials is not None:
        shown += f", credentials from {s.proxy_credentials}"
    return shown


def _with_scheme(value: str) -> str:
    return value if "://" in value else f"http://{value}"


def record(s: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    """What the journal keeps under ``extra["ops"]``."""
    return {"proxy": describe_proxy(s, env),
            "metrics_file": str(s.metrics_file) if s.metrics_file else None,
            "log_format": s.log_format, "disk_margin_bytes": s.disk_margin_bytes}
