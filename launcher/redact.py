"""Credentials in URLs never leave the process: ``user:password@`` and query values.

A manifest URL may carry a secret (``https://user:token@host/...``, ``?token=...``, a signed
download URL's ``X-Amz-Signature``). Every error is described through
:class:`launcher.errors.LauncherError`, whose text passes :func:`redact`, and every log line
through :class:`RedactFilter`: so ``last_error``, the worker's result line, ``state.json``,
``STATUS=`` and the logs show ``https://***@host/path?token=***`` instead. Standard library
only: the resident uses it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# A URL as it appears inside a message: a scheme, optional userinfo (which may hold quotes,
# parentheses and brackets: RFC 3986's sub-delims), an optional IPv6 literal host, then
# anything up to white space, a quote or a bracket (which messages use to set the URL off).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s/?#@]*@)?"
                  r"(?:\[[0-9A-Fa-f:.%a-z]+\])?[^\s'\"<>(){}\[\]]*")


_SECRETS: set[str] = set()


def add_secret(secret: str) -> None:
    """A secret this process holds that is not in a URL (a proxy password read from a
    file): masked wherever it appears from now on. Short strings are not worth masking:
    they would mangle ordinary words."""
    if len(secret) >= 4:
        _SECRETS.add(secret)


# ``user:password@`` whose password holds an unencoded ``/``, ``?`` or ``#`` (which ends the
# authority for urlsplit): everything from the ``:`` after the user to the last ``@`` of the
# token is the password.
_LOOSE_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]+:)[^\s'\"]*@")


def redact(text: str) -> str:
    """``text`` with the userinfo and every query value of each URL in it masked, and every
    secret registered with :func:`add_secret`."""
    for secret in _SECRETS:
        text = text.replace(secret, MASK)
    if "://" not in text:
        return text
    text = _LOOSE_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return _crude(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _mask_pair(pair: str) -> str:
    name, sep, _ = pair.partition("=")
    return f"{name}={MASK}" if sep else MASK if name else ""


def _crude(url: str) -> str:
    """A URL urlsplit refuses: keep the scheme and host part, mask everything after."""
    scheme, _, rest = url.partition("://")
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return f"{scheme}://{MASK}@{host}/{MASK}" if rest != host else f"{scheme}://{host}"


class RedactFilter(logging.Filter):
    """Masks URL credentials in a record's final message (attach it to a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.template = record.msg  # the event it stands for (launcher.logformat)
            if isinstance(record.args, tuple):  # its fields, redacted (launcher.logformat)
                record.fields = tuple(redact(a) if isinstance(a, str) else a
                                      for a in record.args)
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # A traceback quotes exception messages (an httpx error names its URL): format it
            # here, redacted; the handler's formatter then uses this text as it is.
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FORMATTER = logging.Formatter()
