"""``install VERSION`` in the worker: one named release, verified like any other, staged.

The manifest is the release's own, ``versions/VERSION/version.json`` (+ ``.minisig``) beside
the main manifest (``launcher.layout``), always fetched in full. It must carry a valid
signature by a configured key and must not have expired; it must be VERSION's and this
product's, and it may have a serial below the floor (``trust.check_install``: the one
exception, and only on this path); a build of it on the bad list is refused (``unblock``
first). The binary is then staged as on every update: size, sha256, preflight.

The manifest is not reported as accepted, so the serial floor and the record of the main
manifest (its validators, its expiry) stay as they were: the next poll of the main manifest
is judged exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launcher import layout
from launcher import trust as trusted
from launcher.errors import BlockedError, ConfigError, ExpiredError, ManifestError
from launcher.sources.base import Validators

if TYPE_CHECKING:
    import httpx

    from launcher.worker import Result

log = logging.getLogger("launcher.worker")


def run(request: dict[str, Any], s: dict[str, Any], client: httpx.Client,
        now: Callable[[], Any]) -> Result:
    from launcher import policy, worker
    from launcher.manifest import check_not_expired, parse_manifest

    version = str(request["install"])
    if s.get("github_repo"):
        raise ConfigError("install VERSION needs --manifest-url (releases from the GitHub "
                          "API are not supported by install yet)")
    try:
        url = layout.version_url(s["manifest_url"], version)
    except ValueError as exc:
        raise ConfigError(f"install: {exc}") from exc
    source = worker.source_for(s, client, url)
    fetched = source.fetch(Validators())
    if fetched.body is None:
        raise ManifestError(f"no manifest at {url}")
    keys = worker.verify_signature(source, fetched.body, s)
    manifest = parse_manifest(fetched.body)
    # Expiry is the freshness of what a channel says is current; a release the operator
    # names is not a claim about now, and every release's manifest expires within 30 days
    # of its signing by default. Its signature, serial record and checksums still apply.
    try:
        check_not_expired(manifest, now())
    except ExpiredError as exc:
        log.warning("install of %s: %s; installing it anyway, as the operator named it",
                    version, exc)
    floor = trusted.floor(request.get("trust"), keys.trusted, s.get("min_serial"))
    trusted.check_install(manifest, version, floor, required=keys.signer != trusted.UNSIGNED)
    binary = manifest.binary_for(s["platform"])
    if policy.is_bad(manifest.version, binary.sha256, [tuple(b) for b in request["bad"]]):
        raise BlockedError(f"{manifest.version} (sha256 {binary.sha256[:12]}) is marked bad: "
                           f"run `unblock {manifest.version}` first")
    log.info("Install requested: %s (serial %s, floor %s). Synchronizing...",
             manifest.version, manifest.serial, floor)
    staged = worker.stage(source, client, s, manifest.version, binary)
    return worker.Result(outcome="staged", version=manifest.version, sha256=binary.sha256,
                         file=staged, reason="installed on the operator's request",
                         install=version)
