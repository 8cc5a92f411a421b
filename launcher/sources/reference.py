"""Names of OCI releases: ``oci://HOST[:PORT]/REPOSITORY:TAG`` and ``--mirror`` hosts.

Standard library only: the settings (which the resident loads) validate them at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from launcher.errors import ConfigError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Reference:
    """``oci://HOST[:PORT]/REPOSITORY:TAG``."""

    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repository}:{self.tag}"


def parse_reference(url: str, what: str = "--manifest-url") -> Reference:
    """The reference in ``url``; ConfigError saying what is wrong with it."""
    rest = url.removeprefix("oci://")
    host, _, path = rest.partition("/")
    repository, sep, tag = path.rpartition(":")
    if rest == url or not sep or "/" in tag:
        raise ConfigError(f"{what} {url!r}: use oci://HOST[:PORT]/REPOSITORY:TAG")
    if not _HOST.fullmatch(host):
        raise ConfigError(f"{what} {url!r}: {host!r} is not a registry host[:port]")
    if not _NAME.fullmatch(repository):
        raise ConfigError(f"{what} {url!r}: {repository!r} is not a repository name "
                          "(lowercase letters, digits, '.', '_', '-', separated by '/')")
    if not _TAG.fullmatch(tag):
        raise ConfigError(f"{what} {url!r}: {tag!r} is not a tag")
    return Reference(host, repository, tag)


def parse_mirror(text: str) -> tuple[str, str]:
    """``HOST[:PORT][/PREFIX]``: the mirror's host and the path it puts before repositories."""
    host, _, prefix = text.removeprefix("https://").partition("/")
    prefix = prefix.strip("/")
    if not _HOST.fullmatch(host) or (prefix and not _NAME.fullmatch(prefix)):
        raise ConfigError(f"--mirror {text!r}: use HOST[:PORT] or HOST[:PORT]/PREFIX")
    return host, prefix


