"""Live configuration: which files the watcher watches, and what a reloaded config changes.

Pure functions over settings; the supervisor acts on the answer (a new source drops the
validators and checks at once, a changed watch list restarts the watcher).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from urllib.parse import urlsplit

from launcher.settings import Settings

log = logging.getLogger(__name__)

FIXED = ("state_dir", "mode")  # taken only at start


def watch_paths(settings: Settings, config_file: Path | None) -> list[str]:
    """A ``file://`` manifest and the config file, when there are such."""
    paths = []
    url = settings.manifest_url or ""
    if url.startswith("file://"):
        paths.append(str(Path(urlsplit(url).path).resolve()))
    if config_file is not None:
        paths.append(str(config_file))
    return paths


def merge(running: Settings, loaded: Settings) -> tuple[Settings, list[str]]:
    """The settings to run with after a reload, and the names of those that changed."""
    for name in FIXED:
        if getattr(loaded, name) != getattr(running, name):
            log.warning("config: %s changes only at the next start", name)
    new = dataclasses.replace(loaded, **{n: getattr(running, n) for n in FIXED})
    changed = [f.name for f in dataclasses.fields(Settings)
               if getattr(new, f.name) != getattr(running, f.name)]
    return new, changed
