"""One update check, run in a short-lived process so the resident stays small.

The resident starts ``python -m launcher.worker``, writes a request (JSON) to its stdin
and reads one result line (JSON) from its stdout; logs go to stderr. The worker fetches
the manifest, decides with ``policy``, and when asked to stage: downloads the build
beside ``bin/agent``, verifies it and runs the preflight. It never touches
``bin/agent`` or the journal: the swap and every decision about the child stay in the
resident. Exit status 0 when the source answered and the manifest was accepted, 1 on
an error (the result line then names it).

Trust (``launcher.trust``): the request carries what the journal keeps of earlier accepted
manifests (``trust``); the result carries what the resident must journal of this one
(``accepted``: version, serial, expires, signing key) and the mode it ran in
(``signatures``: ``required`` or ``off``). Without a public key the worker refuses to run
unless ``allow_unsigned`` is set, whatever started it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from launcher import faults, layout, logformat
from launcher import trust as trusted
from launcher.errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    InsecureError,
    LauncherError,
    ManifestError,
    SignatureError,
)
from launcher.redact import RedactFilter, redact
from launcher.sources import cadir, revalidate
from launcher.sources.base import Validators
from launcher.sources.local import LocalSource

if TYPE_CHECKING:
    import httpx

    from launcher.manifest import Binary
    from launcher.proxy import Routes
    from launcher.sources.base import FetchResult, Source

# A no-change check, the common case, pays for the interpreter and ``revalidate``'s
# conditional GET over the standard library. httpx comes only when that did not end in a
# 304; the rest (pydantic models, policy, signatures, download, preflight) only once the
# source has answered with a new manifest.

log = logging.getLogger("launcher.worker")


@dataclass
class Result:
    outcome: str  # not_modified | none | install | update | staged | error
    version: str | None = None
    sha256: str | None = None
    file: str | None = None
    reason: str | None = None
    error: str | None = None
    error_kind: str | None = None
    retry_after_s: float | None = None
    etag: str | None = None
    last_modified: str | None = None
    cohort: float | None = None  # this host's place in [0, 100) for ``version``'s rollout
    signatures: str | None = None  # required | off: what this check enforced
    accepted: dict[str, Any] | None = None  # the manifest accepted (see launcher.trust)
    install: str | None = None  # the version of an ``install VERSION`` check (explicit.py)


def run_check(
    request: dict[str, Any],
    *,
    client: httpx.Client | None = None,
    now: Callable[[], Any] | None = None,
) -> Result:
    """Fetch, decide and (if ``request['stage']``) stage; never raises a LauncherError."""
    s = request["settings"]
    signatures = "required" if s.get("public_keys") or not s.get("allow_unsigned") else "off"
    own_client = client is None
    try:
        if signatures == "required" and not s.get("public_keys"):
            raise SignatureError("no public key configured: signatures are required (give "
                                 "--public-key, or --allow-unsigned to take unsigned releases)")
        result = _not_modified(request, s, now) if own_client else None
        if result is None:
            if own_client:
                from launcher.sources.http import make_client

                client = make_client(
                    ca_file=s.get("ca_file"), allow_http=bool(s.get("allow_http")),
                    proxy=_proxy_routes(s),
                )
            assert client is not None
            result = _check(request, s, client, now)
            if own_client:
                _build_ca_dir(s)
    except LauncherError as exc:
        log.error("check failed: %s", exc.describe())
        install = request.get("install")
        result = Result(
            outcome="error", error=exc.describe(), error_kind=exc.kind,
            retry_after_s=getattr(exc, "retry_after_s", None),
            # A failed install names itself, so the gate counts and settles it.
            install=install if isinstance(install, str) else None,
        )
    finally:
        if own_client and client is not None:
            client.close()
    result.signatures = signatures
    return result


def _proxy_routes(s: dict[str, Any]) -> Routes | None:
    """The proxy of ``--proxy``; without one, ``launcher.proxy`` is not even imported."""
    if not s.get("proxy"):
        return None
    from launcher import proxy

    return proxy.from_settings(s, os.environ)


def _check(
    request: dict[str, Any], s: dict[str, Any], client: httpx.Client,
    now: Callable[[], Any] | None,
) -> Result:
    if request.get("install"):
        from launcher import explicit

        return explicit.run(request, s, client, now or _utcnow)
    source = source_for(s, client)
    while True:
        try:
            return _check_release(request, s, client, source, now)
        except (ManifestError, ChecksumError, SignatureError) as exc:
            # A mirror's release that fails verification is skipped like a mirror that is
            # down: the check starts over from the next host (each mirror at most once).
            skip = getattr(source, "skip_release_mirror", None)
            if skip is None or not skip(exc):
                raise


def _check_release(
    request: dict[str, Any], s: dict[str, Any], client: httpx.Client, source: Source,
    now: Callable[[], Any] | None,
) -> Result:
    trust = request.get("trust")
    validators = _validators(request, s)
    fetched: FetchResult = source.fetch(validators)
    moment = now() if now else _utcnow()
    if fetched.not_modified or fetched.body is None:
        return _still_fresh(trust, validators, moment)
    from launcher import policy
    from launcher.manifest import check_not_expired, parse_manifest

    key_ids = verify_signature(source, fetched.body, s)
    manifest = parse_manifest(fetched.body)
    check_not_expired(manifest, moment)
    trusted.check_identity(manifest, channel=str(s.get("channel") or "stable"))
    floor = trusted.floor(trust, key_ids.trusted, s.get("min_serial"))
    trusted.check_serial(manifest, floor, required=key_ids.signer != trusted.UNSIGNED)
    binary = manifest.binary_for(s["platform"])
    current = request.get("current")
    cohort = policy.cohort(request["host_id"], manifest.version)
    decision = policy.decide(
        candidate=manifest.version,
        current=current["version"] if current else None,
        bad=[tuple(b) for b in request.get("bad", [])],
        candidate_sha256=binary.sha256,
        cohort=cohort,
        rollout_percent=manifest.rollout.percent if manifest.rollout else None,
        pins=_pins(request, s),
    )
    result = Result(
        outcome=decision.action, version=manifest.version, sha256=binary.sha256,
        reason=decision.reason, etag=fetched.validators.etag,
        last_modified=fetched.validators.last_modified, cohort=cohort,
        accepted=trusted.record(manifest, key_ids.signer),
    )
    if decision.action == "none":
        log.info("no update: %s", decision.reason)
        return result
    if not request.get("stage"):
        log.info("update available: %s (%s)", manifest.version, decision.reason)
        return result
    waiting = request.get("staged")  # launcher.gate: already staged, waiting for a window
    if isinstance(waiting, dict) and waiting.get("version") == manifest.version \
            and waiting.get("sha256") == binary.sha256:
        log.info("%s is staged already, waiting for a maintenance window", manifest.version)
        result.file, result.outcome = str(waiting["file"]), "staged"
        return result
    log.info("Update found: %s. Synchronizing...", manifest.version)
    result.file = stage(source, client, s, manifest.version, binary)
    result.outcome = "staged"
    return result


def _pins(request: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """The caps in force (launcher.controls): the host's pin and the config file's."""
    from packaging.version import InvalidVersion, Version

    pins = [p for p in (request.get("pin"), s.get("pin")) if isinstance(p, str)]
    for pin in pins:
        try:
            Version(pin)
        except InvalidVersion:
            raise ConfigError(f"pin {pin!r} is not a version: `unpin`, or pin a version") \
                from None
    return pins


def _validators(request: dict[str, Any], s: dict[str, Any]) -> Validators:
    """The validators to send, or none when a 304 to them could not be trusted."""
    trust = request.get("trust")
    validators = Validators(etag=request.get("etag"), last_modified=request.get("last_modified"))
    if validators and not trusted.accepted(trust):
        # Validators with no record of what they validate (a journal from before trust was
        # kept): a 304 could not be checked for expiry, so fetch in full.
        return Validators()
    if validators and str(trusted.accepted(trust).get("key")) not in _configured_keys(s):
        # What the validators stand for was accepted under a key no longer trusted (rotated
        # out, compromised) or unsigned while signatures are now required: a 304 must not
        # keep it. Fetch in full, so the signature is checked again.
        return Validators()
    return validators


def _still_fresh(trust: Any, validators: Validators, moment: Any) -> Result:
    """A 304 to ``validators``: the manifest accepted earlier stands if it has not expired."""
    trusted.check_still_fresh(trust, moment)
    log.info("manifest not modified")
    return Result(outcome="not_modified", etag=validators.etag,
                  last_modified=validators.last_modified)


def _not_modified(request: dict[str, Any], s: dict[str, Any],
                  now: Callable[[], Any] | None) -> Result | None:
    """The check's answer when the source says 304 to a conditional GET sent without httpx
    (``launcher.sources.revalidate``); None: do the full check."""
    deadline_s = s.get("metadata_deadline_s")
    if request.get("install") or not revalidate.applies(s) \
            or not isinstance(deadline_s, int | float):
        return None
    validators = _validators(request, s)
    if not validators or not revalidate.not_modified(
            layout.channel_url(s["manifest_url"], str(s.get("channel") or layout.STABLE)),
            validators, ca_file=s.get("ca_file"),
            allow_http=bool(s.get("allow_http")), deadline_s=float(deadline_s),
            ca_dir=_ca_dir(s)):
        return None
    return _still_fresh(request.get("trust"), validators, now() if now else _utcnow())


def _ca_dir(s: dict[str, Any]) -> str | None:
    """certifi's bundle as a hashed directory, when an earlier full check built it."""
    if not s.get("state_dir") or urlsplit(str(s.get("manifest_url"))).scheme != "https":
        return None
    return cadir.find(str(s["state_dir"]), revalidate.certifi_bundle())


def _build_ca_dir(s: dict[str, Any]) -> None:
    """After a full check over https that a no-change check could answer next time: build
    the hashed directory it loads instead of the bundle (once per certifi bundle)."""
    if revalidate.applies(s) and s.get("state_dir") \
            and urlsplit(str(s["manifest_url"])).scheme == "https":
        cadir.build(str(s["state_dir"]), revalidate.certifi_bundle())


def source_for(s: dict[str, Any], client: httpx.Client, url: str | None = None) -> Source:
    """The source of the configured channel's manifest (``launcher.layout``), or of ``url``.

    An OCI release (a registry tag or an offline bundle) is one release: its channel is the
    signed field alone, checked like any other's."""
    from launcher.sources.http import METADATA_DEADLINE_S, MIN_SPEED_BPS, HttpSource

    if url is None and s.get("github_repo"):
        from launcher.sources import github

        return github.from_settings(s, client)
    if url is None and urlsplit(s["manifest_url"]).scheme == "oci":
        from launcher.sources import oci

        return oci.from_settings(s, client)
    if url is None and not _is_bundle(s["manifest_url"]):
        url = layout.channel_url(s["manifest_url"], str(s.get("channel") or layout.STABLE))
    url = url or s["manifest_url"]
    if urlsplit(url).scheme == "file":
        local = LocalSource.from_url(url)
        if _is_bundle(url):  # an offline bundle (OCI image layout)
            from launcher.sources.layout import LayoutSource

            return LayoutSource(local.path, channel=str(s.get("channel") or "stable"))
        return local
    # .get: a resident started before an upgrade sends the settings it knew.
    return HttpSource(url, client=client,
                      deadline_s=float(s.get("metadata_deadline_s") or METADATA_DEADLINE_S),
                      min_speed_bps=float(s.get("min_speed_bps") or MIN_SPEED_BPS))


def _is_bundle(url: str) -> bool:
    return urlsplit(url).scheme == "file" and \
        (LocalSource.from_url(url).path / "oci-layout").is_file()


def stage(source: Source, client: httpx.Client, s: dict[str, Any], version: str,
          binary: Binary) -> str:
    """Download (or copy, or rebuild from a patch) ``binary`` beside ``bin/agent``, verified;
    the temp file's name."""
    from launcher import diskspace, partial, preflight
    from launcher.sources.base import CarriesBinaries, CarriesPatches

    bin_dir = Path(s["state_dir"]) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(s["max_binary_bytes"])
    if binary.size is not None and binary.size > max_bytes:  # rebuilt from a patch, too
        raise DownloadError(f"binary of {binary.size} bytes exceeds the limit of {max_bytes} "
                            "bytes")
    diskspace.require_room(bin_dir, diskspace.build_size(binary.size, bin_dir, max_bytes),
                           int(s.get("disk_margin_bytes") or 0), version)
    carrier = source if isinstance(source, CarriesBinaries) else None  # OCI: by digest
    if carrier is None and urlsplit(binary.url).scheme == "oci":
        raise ManifestError(f"binary URL {binary.url} names a blob of an OCI release: it "
                            "installs only from an OCI registry or layout source")
    # One --download-deadline for the whole stage, so the resident's limit on the worker
    # holds: a patch gets half of it, the full build what is left (at least the other half).
    deadline = float(s["download_deadline_s"])
    started = time.monotonic()
    tries_patch = bool(binary.deltas) and (carrier is None or isinstance(source, CarriesPatches))
    patched = (_via_delta(source, client, s, version, binary, bin_dir, deadline / 2)
               if tries_patch else None)
    left = (max(deadline - (time.monotonic() - started), deadline / 2) if tries_patch
            else deadline)  # no patch tried: the whole deadline, as configured
    if patched is not None:
        staged = patched
    elif carrier is not None:
        staged = carrier.stage_binary(binary, s["platform"], bin_dir, s, version=version,
                                     deadline_s=left, keep=_release_files(binary))
    else:
        staged = _fetch(
            source, client, s, binary.url, bin_dir, sha256=binary.sha256, size=binary.size,
            extra={"version": version, "kind": "full"}, keep=_release_files(binary),
            deadline_s=left)
    faults.worker_fault("downloaded")
    try:
        preflight.preflight(staged, version)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    partial.prune(bin_dir, keep=staged.name)  # the release's other partials are done with
    log.info("staged %s (sha256 %s) as %s", version, binary.sha256[:12], staged.name)
    return staged.name


def _fetch(source: Source, client: httpx.Client, s: dict[str, Any], url: str, bin_dir: Path,
           *, sha256: str, size: int | None, extra: dict[str, Any], deadline_s: float,
           keep: tuple[str, ...] = ()) -> Path:
    """One file of the release into ``bin_dir``, capped at ``size`` and checked against
    ``sha256``: copied from a local release, else downloaded (resumable, with progress;
    the partials of ``keep``, the release's other files, stay for the next check)."""
    from launcher import download
    from launcher.progress import TRANSFER_FILE, Progress

    # Plain http is refused by the client itself, on this URL and every redirect hop.
    if urlsplit(url).scheme == "file":
        if not isinstance(source, LocalSource):
            raise InsecureError(f"refusing local file URL {url} from a remote manifest")
        return download.copy_local(LocalSource.from_url(url).path, bin_dir,
                                   expected_sha256=sha256, expected_size=size,
                                   max_bytes=int(s["max_binary_bytes"]))
    progress = Progress(redact(url), size, file=Path(s["state_dir"]) / TRANSFER_FILE,
                        extra=extra)
    return download.download(
        client, url, bin_dir, expected_sha256=sha256, expected_size=size,
        max_bytes=int(s["max_binary_bytes"]), deadline_s=deadline_s,
        min_speed_bps=float(s["min_speed_bps"]), progress=progress, keep_partials=keep,
    )


def _release_files(binary: Binary) -> tuple[str, ...]:
    """The sha256s of the files staging ``binary`` may download: the build and its patches.
    Their partials survive each other, so a slow link resumes both across checks."""
    return (binary.sha256, *(d.sha256 for d in binary.deltas))


def _via_delta(source: Source, client: httpx.Client, s: dict[str, Any], version: str,
               binary: Binary, bin_dir: Path, deadline_s: float) -> Path | None:
    """The build rebuilt from the installed one and a signed patch, or None (no patch fits
    the installed build, or using it failed: the caller downloads the full build)."""
    from launcher import delta
    from launcher.oneshot import sha256
    from launcher.sources.base import CarriesPatches

    installed = bin_dir / "agent"
    chosen = delta.choose(binary, sha256(installed))
    if chosen is None:
        log.info("no patch in the manifest fits the installed build; downloading the full "
                 "build")
        return None
    assert binary.size is not None  # choose() returns a patch only for a sized build
    try:
        if isinstance(source, CarriesPatches):
            patch = source.stage_patch(binary, chosen, s["platform"], bin_dir, s,
                                       version=version, deadline_s=deadline_s,
                                       keep=_release_files(binary))
        else:
            patch = _fetch(source, client, s, chosen.url, bin_dir, sha256=chosen.sha256,
                           size=chosen.size, extra={"version": version, "kind": "delta"},
                           keep=_release_files(binary), deadline_s=deadline_s)
        try:
            rebuilt = delta.apply_patch(installed, patch, bin_dir,
                                        expected_sha256=binary.sha256,
                                        expected_size=binary.size)
        finally:
            patch.unlink(missing_ok=True)
    except Exception as exc:  # any failure of the patch path falls back to the full build
        described = exc.describe() if isinstance(exc, LauncherError) else repr(exc)
        log.warning("patch from the installed build failed (%s); downloading the full build",
                    redact(described))
        return None
    log.info("rebuilt %s from a %d byte patch instead of downloading %d bytes", version,
             chosen.size, binary.size)
    return rebuilt


@dataclass(frozen=True)
class _Keys:
    signer: str  # the key id that signed the manifest, or trust.UNSIGNED
    trusted: tuple[str, ...]  # the key ids whose serial floors count


def verify_signature(source: Source, body: bytes, s: dict[str, Any]) -> _Keys:
    """With public keys configured, the manifest's bytes must carry a valid signature."""
    paths = s.get("public_keys") or ()
    if not paths:
        return _Keys(trusted.UNSIGNED, (trusted.UNSIGNED,))
    from launcher import signature

    keys = [signature.load_public_key(Path(p)) for p in paths]
    data = source.fetch_signature(signature.MAX_SIGNATURE_BYTES)
    key, comment = signature.verify(body, data, keys,
                                    allow_legacy=bool(s.get("allow_legacy_signatures")))
    log.info("manifest signature verified with key %s (trusted comment: %s)", key.id_hex,
             comment)
    return _Keys(key.id_hex, tuple(k.id_hex for k in keys))


def _configured_keys(s: dict[str, Any]) -> set[str]:
    """Key ids a manifest may be accepted under now ("unsigned" when signatures are off)."""
    paths = s.get("public_keys") or ()
    if not paths:
        return {trusted.UNSIGNED}
    from launcher import signature

    return {signature.load_public_key(Path(p)).id_hex for p in paths}


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as exc:
        print(json.dumps({"outcome": "error", "error": f"bad worker request: {exc}"}))
        return 1
    s = request.get("settings") if isinstance(request, dict) else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logformat.formatter(
        "json" if isinstance(s, dict) and s.get("log_format") == "json" else "text", "worker"))
    handler.addFilter(RedactFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        result = run_check(request)
    except Exception as exc:  # a bug, not a server's doing: still a result line, redacted
        log.exception("update check crashed")
        result = Result(outcome="error", error_kind="worker",
                        error=f"worker: update check crashed: {redact(repr(exc))}")
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()
    return 1 if result.outcome == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
