"""The launcher's exception tree, split by who is at fault.

    LauncherError
    ├── ConfigError          the operator's: bad flags, file or environment (exit 2)
    ├── LockedError          another launcher owns the state directory (exit 2)
    ├── SourceError          the update source's: never marks a build bad
    │   ├── TransportError   server down, 5xx, 429, timeouts, resets, TLS
    │   │   └── InsecureError  plain http refused (URL or redirect hop) without --allow-http
    │   ├── ManifestError    malformed JSON, missing fields, bad version, no platform entry,
    │   │   │                another product or channel
    │   │   ├── ExpiredError   the manifest's ``expires`` has passed (a 304 included)
    │   │   └── RollbackError  a serial below the one already accepted (a replay)
    │   ├── DownloadError    truncated, too large, too slow, past its deadline
    │   ├── ChecksumError    sha256 mismatch
    │   └── SignatureError   missing, bad or foreign signature
    ├── PreflightError       the staged build does not run or prints the wrong version
    ├── BlockedError         ``install VERSION`` of a build marked bad (``unblock`` first)
    └── HostError            this host's: disk full, read-only, missing files

Every error carries ``kind``, one short word an operator can grep for; it becomes the
first word of ``last_error`` in ``status``. Foreign exceptions (httpx, pydantic, OSError)
are translated into these at exactly one boundary each, with ``raise ... from exc``.

The text of every error passes :func:`launcher.redact.redact`, so a credential in a URL
(``user:password@``, a query value) never reaches ``last_error``, a result line or a log.
"""

from __future__ import annotations

from launcher.redact import redact


class LauncherError(Exception):
    kind = "error"

    def __str__(self) -> str:
        return redact(super().__str__())

    def describe(self) -> str:
        """``kind: message``, the form stored as ``last_error``."""
        return f"{self.kind}: {self}"


class ConfigError(LauncherError):
    kind = "config"


class LockedError(LauncherError):
    kind = "locked"


class SourceError(LauncherError):
    kind = "source"


class TransportError(SourceError):
    kind = "transport"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsecureError(TransportError):
    kind = "https"


class ManifestError(SourceError):
    kind = "manifest"


class ExpiredError(ManifestError):
    kind = "expired"


class RollbackError(ManifestError):
    kind = "rollback"


class DownloadError(SourceError):
    kind = "download"


class ChecksumError(SourceError):
    kind = "sha256"


class SignatureError(SourceError):
    kind = "signature"


class PreflightError(LauncherError):
    kind = "preflight"


class BlockedError(LauncherError):
    kind = "blocked"


class HostError(LauncherError):
    kind = "host"
