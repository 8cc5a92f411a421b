"""The head of an HTTP/1.x response, read at least as strictly as httpx (h11) reads it.

The no-change check without httpx (``revalidate``) takes a 304 from a bare socket; a head
it does not accept is :class:`ValueError`, and the check is then done in full through
httpx, which decides and words the error. So nothing h11 refuses as a protocol error is
taken here, and a little more is refused (the full check costs time, never safety):

- a status line that is not ``HTTP/1.0`` or ``HTTP/1.1``, a 3-digit code and an optional
  reason;
- a header line without a colon, a name that is not an RFC 9110 token (a space before
  the colon, a line that starts with a space or tab: obs-fold, a continuation line);
- a NUL or any other control character but a tab in a name or value;
- Content-Length values that are not digits or differ; a Transfer-Encoding other than
  ``chunked``; more than one Location.
"""

from __future__ import annotations

import re

_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")


def parse(head: bytes) -> tuple[int, str | None]:
    """``head``: the status line and header lines, CRLF-separated, without the blank line.
    Returns (status, the Location header or None); ValueError for what is not read."""
    status_line, *lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(status_line)
    if status is None:
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise ValueError(f"not a header line: {line[:80]!r}")
        fields.setdefault(field[1].lower(), []).append(field[2])
    lengths = {v.strip() for value in fields.get(b"content-length", []) for v in value.split(b",")}
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise ValueError(f"bad or conflicting Content-Length: {sorted(lengths)!r}")
    if any(v.lower() != b"chunked" for v in fields.get(b"transfer-encoding", [])):
        raise ValueError("a Transfer-Encoding other than chunked")
    locations = fields.get(b"location", [])
    if len(locations) > 1:
        raise ValueError("more than one Location header")
    return int(status[1]), locations[0].decode("latin-1") if locations else None
