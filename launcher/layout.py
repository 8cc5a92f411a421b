"""Where a release directory keeps each channel's and each version's manifest.

Beside the main manifest (``.../version.json``, the ``stable`` channel), as the release tool
writes them::

    version.json                          stable
    channels/NAME/version.json            channel NAME (stable's is the main one)
    versions/VERSION/version.json         every release ever published, for ``install``

Each with its ``.minisig`` beside it. Pure string work on URLs; standard library only.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

STABLE = "stable"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+!-]{0,63}")


# PEP 440 as release tools write it (no epoch): 1.4, 1.4.2rc1, 1.4.2.post1, 3.46.3+bea5943.
_PEP440 = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?"
                     r"(\+[a-z0-9]+(\.[a-z0-9]+)*)?", re.IGNORECASE)


def is_version(text: str) -> bool:
    """A version ``packaging`` will parse (checked without it: the resident is stdlib)."""
    return bool(_PEP440.fullmatch(text))


def safe_name(text: str) -> bool:
    """A channel or version that can name a directory: no '/', no '..', not too long."""
    return bool(_NAME.fullmatch(text)) and ".." not in text


def _beside(manifest_url: str, *parts: str) -> str:
    if urlsplit(manifest_url).scheme == "oci":
        raise ValueError("an oci:// release is one tag: name the release's tag in "
                         "--manifest-url instead")
    for part in parts[:-1]:
        if not safe_name(part):
            raise ValueError(f"{part!r} cannot name a directory of a release")
    split = urlsplit(manifest_url)
    head, _, name = split.path.rpartition("/")
    path = "/".join((head, *parts[:-1], name or parts[-1]))
    return urlunsplit(split._replace(path=path))


def channel_url(manifest_url: str, channel: str) -> str:
    """The manifest of ``channel``: the main one for stable, else ``channels/NAME/``."""
    if channel == STABLE:
        return manifest_url
    return _beside(manifest_url, "channels", channel, "version.json")


def version_url(manifest_url: str, version: str) -> str:
    """The manifest of one release, ``versions/VERSION/``, beside the main manifest."""
    return _beside(manifest_url, "versions", version, "version.json")
