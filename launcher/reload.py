"""Live configuration: which files the watcher watches, and what a reloaded config changes.

``watch_paths`` and ``merge`` are pure; ``LiveConfig`` acts on their answer: a watched
manifest that changed is checked at once, a new source drops the validators and is checked
at once, a changed watch list restarts the watcher, a bad file is refused and the running
settings kept.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from launcher import controls, ops
from launcher.errors import ConfigError
from launcher.resident import Resident
from launcher.settings import Settings
from launcher.watcher import Watcher

log = logging.getLogger(__name__)

FIXED = ("state_dir", "mode", "log_format")  # taken only at start


def watch_paths(settings: Settings, config_file: Path | None) -> list[str]:
    """A ``file://`` manifest (an OCI layout's ``index.json``) and the config file, when
    there are such."""
    paths = []
    url = settings.manifest_url or ""
    if url.startswith("file://"):
        path = Path(urlsplit(url).path).resolve()
        if (path / "oci-layout").is_file():  # an offline bundle: index.json names the release
            path = path / "index.json"
        paths.append(str(path))
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


class LiveConfig:
    def __init__(self, res: Resident, watcher: Watcher, config_file: Path | None,
                 load: Callable[[], Settings] | None) -> None:
        self.res = res
        self.watcher = watcher
        self.config_file = config_file
        self.load = load

    def paths(self) -> list[str]:
        return watch_paths(self.res.s, self.config_file)

    def changed(self, path: str) -> None:
        """The watcher saw ``path`` change."""
        if self.config_file is not None and path == str(self.config_file):
            self.reload()
        elif path in self.paths() and self.res.s.manifest_url:
            log.info("%s changed: checking now", path)
            self.res.checks.soon()

    def reload(self) -> None:
        assert self.load is not None
        res, checks = self.res, self.res.checks
        try:
            new, changed = merge(res.s, self.load())
        except ConfigError as exc:
            log.error("config reload refused, keeping the running settings: %s", exc)
            return
        if not changed:
            return
        log.info("config reloaded: %s changed", ", ".join(changed))
        source_changed = new.manifest_url != res.s.manifest_url or new.channel != res.s.channel
        res.s = new
        journaled = controls.journal_settings(res.state, new, res.now_iso())
        res.save(dataclasses.replace(journaled, extra={**journaled.extra,
                                                       "ops": ops.record(new, res.env)}))
        if source_changed:
            checks.epoch += 1
            res.save(dataclasses.replace(res.state, etag=None, last_modified=None))
        self.watcher.watch(self.paths())
        if not res.s.manifest_url:
            checks.cancel()
        elif checks.worker is not None:
            checks.recheck = checks.recheck or source_changed
        elif res.state.phase != "trial":
            checks.schedule(0.0 if source_changed else checks.poll_delay())
