#!/usr/bin/env python3
"""Publish an agent release into a directory an update server serves.

    python3 packaging/release_tool.py VERSION [--binary FILE] [--release-dir DIR]
                                              [--base-url URL] [--sign-key FILE]
                                              [--expires-in DAYS | --no-expires] [--serial N]
                                              [--channel NAME] [--delta-from FILE|VERSION ...]
    python3 packaging/release_tool.py VERSION --oci-push oci://HOST/REPO:TAG | --oci-layout DIR
                                              [--registry-credentials FILE] [--ca-file FILE]
                                              [--channel NAME] [--delta-from FILE|VERSION ...]
    python3 packaging/release_tool.py resign --sign-key FILE [--release-dir DIR | --manifest
                                              FILE] [--expires-in DAYS | --no-expires]
    python3 packaging/release_tool.py promote VERSION --to CHANNEL [--from CHANNEL]
                                              [--release-dir DIR] [--sign-key FILE]

Without ``--binary`` the agent is built for VERSION (``build_agent.py``); with it, FILE
is published as it is, whatever it holds. The order is what keeps clients safe:

1. the binaries, under versioned paths ``bin/VERSION/agent-linux-{amd64,arm64}``, each
   written to a temporary file beside its target, fsynced, made executable and renamed;
2. then ``version.json``, replaced atomically (temporary file, fsync, ``os.replace``,
   fsync of the directory), so a client never sees a manifest naming a missing binary;
   The release's own manifest, ``versions/VERSION/version.json`` (+ ``.minisig``), is
   written just before the channel's (``channels.py``): it is what ``install VERSION``
   reads, and it stays when later releases replace the channel's manifest. The channel's
   manifest is ``version.json`` for ``stable`` (the default), else
   ``channels/NAME/version.json``; ``promote`` re-issues a release on another channel
   without rebuilding it;
3. with ``--sign-key`` (an unencrypted minisign secret key, see ``minisign_tool.py``),
   ``version.json.minisig`` right after it, replaced atomically too. The signature is made
   in memory before anything is written, so a bad key publishes nothing. A client that
   reads the new manifest with the old signature in the instant between the two renames
   refuses it (verification fails closed) and takes the release on its next poll; the
   other order would cost the same one refusal, with the old manifest instead. An
   unsigned publish removes a stale ``version.json.minisig``.

Every manifest carries ``product``, ``channel``, a ``serial`` that only grows (the Unix time
of signing, above the serial it replaces; ``--serial`` to choose) and ``expires`` (30 days
after signing unless ``--expires-in DAYS`` or ``--no-expires``); see ``freshness.py``.
``resign`` re-issues the published manifest with a new expiry and a higher serial, without a
new build: run it (from an offline machine holding the key) before the expiry passes.

With ``--assets-dir DIR`` nothing is published: DIR receives the asset set of a GitHub
release instead (``agent-linux-amd64``, ``agent-linux-arm64``, ``version.json``,
``SHA256SUMS`` and, with ``--sign-key``, ``version.json.minisig``), its URLs pointing at
``https://github.com/OWNER/REPO/releases/download/vVERSION/`` with ``--github-repo``, else
at ``--base-url``. Upload them to the release tagged ``vVERSION``.

With ``--delta-from FILE|VERSION`` (repeatable) each platform also gets a patch from that
earlier build (a file, or a version already published in the release directory) to the new
one, ``bin/VERSION/agent-PLATFORM.from-BASE.zst``, listed in the signed manifest under
``binaries.PLATFORM.deltas`` (see ``release_deltas.py``); a patch not smaller than the build
is left out. A launcher whose installed build is the base downloads the patch instead.

With ``--oci-push oci://HOST[:PORT]/REPO:TAG`` (repeatable; ``--registry-credentials FILE``,
``--ca-file FILE``) and/or ``--oci-layout DIR`` nothing is published into a release
directory: the release goes to a registry as an OCI artifact, or into DIR as an OCI image
layout (an offline bundle), see ``oci_release.py``. Both need the venv's Python. ``--channel
NAME`` is the signed manifest's channel (and, in a layout, the index entry's ref name).
``--delta-from FILE|VERSION`` (a VERSION published in ``--release-dir``) adds each patch
as a layer of the platform's manifest, after the build, and lists it in the signed
manifest by digest (``oci:sha256:<hex>``); a launcher pulling from a registry or mirror
uses it as from a release directory, one installing from a layout copies the full build
(a local copy costs less than rebuilding).

Exit codes: 0 published; 2 bad arguments (version, missing binary); 1 anything else.
Standard library only, except ``--sign-key`` (``cryptography``, via minisign_tool.py) and
``--delta-from`` (``zstandard``, via release_deltas.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_agent import build_agent  # the sibling script, found via the path above
from channels import channel_manifest, check_channel, main_promote, version_manifest, write_manifest
from freshness import (
    DEFAULT_EXPIRES_DAYS,
    FreshnessError,
    expires_at,
    freshness_options,
    main_resign,
    next_serial,
    previous_serial,
    stamp,
)
from release_files import (
    MANIFEST_NAME,
    ReleaseError,
    fsync_dir,
    load_sign_key,
    read_chunks,
    run_command,
    sign,
    write_atomically,
)

PLATFORMS = ("linux-amd64", "linux-arm64")
DEFAULT_RELEASE_DIR = Path("release")
DEFAULT_BASE_URL = "http://127.0.0.1:8090"
SIGNATURE_NAME = MANIFEST_NAME + ".minisig"
SUMS_NAME = "SHA256SUMS"
MAX_DELTAS = 32  # launcher.manifest.MAX_DELTAS: a launcher refuses a manifest listing more
_GITHUB_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")

# PEP 440 versions in canonical form (no "v" prefix, no alternative spellings), with an
# optional local part as native builds print their build metadata (3.46.3+bea5943; lower
# case, dot-separated): the version also names a directory and a URL path.
_CANONICAL_VERSION = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
    r"((a|b|rc)(0|[1-9][0-9]*))?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?"
    r"(\+[a-z0-9]+(\.[a-z0-9]+)*)?$"
)


def check_version(version: str) -> str:
    if not _CANONICAL_VERSION.match(version):
        raise ReleaseError(
            f"version {version!r} is not a canonical PEP 440 version (e.g. 0.1.2, 1.0rc1, "
            "2.0.post1, 3.46.3+bea5943)"
        )
    return version


def format_release_date(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("release_date must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(
    version: str, base_url: str, release_date: str, files: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    """The manifest for ``files`` (platform to sha256 and size): the seed's format + size."""
    base = base_url.rstrip("/")
    return {
        "version": version,
        "release_date": release_date,
        "binaries": {
            platform: {
                "url": f"{base}/bin/{version}/agent-{platform}",
                "sha256": sha256,
                "size": size,
            }
            for platform, (sha256, size) in files.items()
        },
    }


def publish(
    version: str,
    release_dir: Path,
    base_url: str,
    binary: Path | None = None,
    release_date: datetime | None = None,
    sign_key: Path | None = None,
    *,
    expires_in_days: float | None = DEFAULT_EXPIRES_DAYS,
    serial: int | None = None,
    channel: str = "stable",
    delta_from: Sequence[str] = (),
) -> dict[str, Any]:
    """Publish ``version`` into ``release_dir``; return the manifest written.

    ``delta_from``: earlier builds (a FILE, or a VERSION published in ``release_dir``) to
    publish patches from, beside the binaries, listed in each platform's ``deltas``."""
    check_version(version)
    bases = _all_bases(delta_from, release_dir)
    now = datetime.now(UTC)
    target = channel_manifest(Path(release_dir), check_channel(channel))
    fresh = _freshness(target, now, expires_in_days, serial)
    if not base_url.startswith(("http://", "https://", "file:///")):
        raise ReleaseError(f"base URL {base_url!r} must start with http://, https:// or "
                           "file:/// (a local release directory)")
    if binary is not None and not Path(binary).is_file():
        raise ReleaseError(f"--binary {binary}: no such file")
    secret = load_sign_key(sign_key) if sign_key is not None else None
    release_dir = Path(release_dir)
    bin_dir = release_dir / "bin" / version
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="release-") as scratch:
        source = build_agent(version, Path(scratch) / "agent") if binary is None else Path(binary)
        files = {
            platform: write_atomically(bin_dir / f"agent-{platform}", read_chunks(source), 0o755)
            for platform in PLATFORMS
        }
    patches = _write_deltas(bases, files, bin_dir, f"{base_url.rstrip('/')}/bin/{version}")
    fsync_dir(bin_dir.parent)
    date = format_release_date(release_date or now)
    built = build_manifest(version, base_url, date, files)
    _list_deltas(built, patches)
    manifest = stamp(built, channel=channel, **fresh)
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    signature = sign(body, secret) if secret is not None else None
    write_manifest(version_manifest(release_dir, version), body, signature)
    write_manifest(target, body, signature)
    return manifest


def github_download_base(repo: str, version: str) -> str:
    """Where a GitHub release's assets are downloaded from (the tag is ``v`` + version)."""
    if not _GITHUB_REPO.fullmatch(repo):
        raise ReleaseError(f"--github-repo {repo!r}: use OWNER/NAME")
    return f"https://github.com/{repo}/releases/download/v{version}"


def write_assets(
    version: str,
    assets_dir: Path,
    *,
    github_repo: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    binary: Path | None = None,
    release_date: datetime | None = None,
    sign_key: Path | None = None,
    expires_in_days: float | None = DEFAULT_EXPIRES_DAYS,
    serial: int | None = None,
    delta_from: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a GitHub release's assets into ``assets_dir``; return the manifest."""
    check_version(version)
    bases = _all_bases(delta_from, None)
    now = datetime.now(UTC)
    fresh = _freshness(Path(assets_dir) / MANIFEST_NAME, now, expires_in_days, serial)
    base = github_download_base(github_repo, version) if github_repo else base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ReleaseError(f"base URL {base_url!r} must start with http:// or https://")
    if binary is not None and not Path(binary).is_file():
        raise ReleaseError(f"--binary {binary}: no such file")
    secret = load_sign_key(sign_key) if sign_key is not None else None
    assets_dir = Path(assets_dir)
    assets_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="release-") as scratch:
        source = build_agent(version, Path(scratch) / "agent") if binary is None else Path(binary)
        files = {
            platform: write_atomically(assets_dir / f"agent-{platform}", read_chunks(source),
                                        0o755)
            for platform in PLATFORMS
        }
    patches = _write_deltas(bases, files, assets_dir, base)
    date = format_release_date(release_date or now)
    built = build_manifest(version, base, date, files)
    _list_deltas(built, patches)
    manifest = stamp(built, **fresh)
    for platform, entry in manifest["binaries"].items():
        entry["url"] = f"{base}/agent-{platform}"
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    write_atomically(assets_dir / MANIFEST_NAME, [body], 0o644)
    sums = {f"agent-{p}": sha for p, (sha, _) in files.items()}
    sums.update({entry["url"].rsplit("/", 1)[1]: str(entry["sha256"])
                 for entries in patches.values() for entry in entries})
    sums[MANIFEST_NAME] = hashlib.sha256(body).hexdigest()
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items()))
    write_atomically(assets_dir / SUMS_NAME, [lines.encode()], 0o644)
    if secret is not None:
        write_atomically(assets_dir / SIGNATURE_NAME, [sign(body, secret)], 0o644)
    else:
        (assets_dir / SIGNATURE_NAME).unlink(missing_ok=True)
    return manifest


def _all_bases(delta_from: Sequence[str],
               release_dir: Path | None) -> dict[str, dict[str, Path]]:
    """Each ``--delta-from``'s builds (see :func:`_delta_bases`); no more than a launcher
    takes, or no host could read the release."""
    if len(set(delta_from)) > MAX_DELTAS:
        raise ReleaseError(f"--delta-from given {len(set(delta_from))} times: a launcher "
                           f"accepts at most {MAX_DELTAS} patches per platform")
    return {spec: _delta_bases(spec, release_dir) for spec in delta_from}


def _delta_bases(spec: str, release_dir: Path | None) -> dict[str, Path]:
    """Each platform's earlier build named by ``spec``: a FILE (for every platform), or a
    VERSION already published in ``release_dir``."""
    if Path(spec).is_file():
        return dict.fromkeys(PLATFORMS, Path(spec))
    if release_dir is None:
        raise ReleaseError(f"--delta-from {spec}: no such file (a VERSION needs a release "
                           "directory)")
    check_version(spec)
    bases = {p: Path(release_dir) / "bin" / spec / f"agent-{p}" for p in PLATFORMS}
    missing = [str(path) for path in bases.values() if not path.is_file()]
    if missing:
        raise ReleaseError(f"--delta-from {spec}: no such file or published version "
                           f"({', '.join(missing)} missing)")
    return bases


@dataclass(frozen=True)
class Patch:
    label: str  # the base's VERSION, or the first 12 hex of its sha256
    base_sha256: str
    data: bytes

    def name(self, platform: str) -> str:
        return f"agent-{platform}.from-{self.label}.zst"


def _make_deltas(bases: dict[str, dict[str, Path]],
                 builds: dict[str, tuple[Path, str, int]]) -> dict[str, list[Patch]]:
    """Each platform's patches from ``bases`` to its build in ``builds`` (file, sha256,
    size). A patch is left out when its base is the new build itself or when it is not
    smaller than the build. Identical (base, build) pairs are computed once."""
    from release_deltas import make_patch

    made: dict[tuple[str, str], bytes | None] = {}
    patches: dict[str, list[Patch]] = {p: [] for p in builds}
    hashed: dict[Path, str] = {}  # a FILE base is every platform's: read it once
    for spec, per_platform in bases.items():
        for platform, (new, sha, size) in builds.items():
            base = per_platform[platform]
            if base not in hashed:
                hashed[base] = hashlib.sha256(base.read_bytes()).hexdigest()
            base_sha = hashed[base]
            if base_sha == sha or any(x.base_sha256 == base_sha for x in patches[platform]):
                continue
            if (base_sha, sha) not in made:
                patch = make_patch(base, new)
                made[(base_sha, sha)] = patch if len(patch) < size else None
            patch_bytes = made[(base_sha, sha)]
            label = spec if not Path(spec).is_file() else base_sha[:12]
            if patch_bytes is None:
                print(f"delta from {label} for {platform} not published: not smaller than "
                      f"the build ({size} bytes)")
                continue
            patches[platform].append(Patch(label, base_sha, patch_bytes))
            print(f"delta from {label} for {platform}: {len(patch_bytes)} bytes "
                  f"({100 * len(patch_bytes) / size:.1f}% of {size})")
    return patches


def _write_deltas(bases: dict[str, dict[str, Path]], files: dict[str, tuple[str, int]],
                  out_dir: Path, url_base: str) -> dict[str, list[dict[str, object]]]:
    """Each platform's patches from ``bases`` written into ``out_dir`` beside its build
    (``agent-PLATFORM``); their manifest entries."""
    from release_deltas import patch_entry

    builds = {p: (out_dir / f"agent-{p}", sha, size) for p, (sha, size) in files.items()}
    entries: dict[str, list[dict[str, object]]] = {}
    for platform, patches in _make_deltas(bases, builds).items():
        for patch in patches:
            write_atomically(out_dir / patch.name(platform), [patch.data], 0o644)
        entries[platform] = [patch_entry(f"{url_base}/{x.name(platform)}", x.base_sha256,
                                         x.data) for x in patches]
    return entries


def _list_deltas(manifest: dict[str, Any], patches: dict[str, list[dict[str, object]]]) -> None:
    for platform, entries in patches.items():
        if entries:
            manifest["binaries"][platform]["deltas"] = entries


def publish_oci(
    version: str,
    *,
    push_urls: tuple[str, ...] = (),
    layout_dir: Path | None = None,
    binary: Path | None = None,
    sign_key: Path | None = None,
    credentials: Path | None = None,
    ca_file: Path | None = None,
    release_date: datetime | None = None,
    expires_in_days: float | None = DEFAULT_EXPIRES_DAYS,
    serial: int | None = None,
    channel: str = "stable",
    delta_from: Sequence[str] = (),
    release_dir: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """The release as an OCI artifact: pushed to each of ``push_urls`` and/or written as an
    image layout in ``layout_dir`` (see ``oci_release.py``); return the signed manifest.

    ``delta_from``: earlier builds (a FILE, or a VERSION published in ``release_dir``) to
    add patches from, as layers of each platform's manifest, listed in the signed
    manifest's ``deltas`` by digest."""
    import oci_release  # imports the launcher package's artifact definitions

    check_version(version)
    check_channel(channel)
    bases = _all_bases(delta_from, release_dir)
    if binary is not None and not Path(binary).is_file():
        raise ReleaseError(f"--binary {binary}: no such file")
    secret = load_sign_key(sign_key) if sign_key is not None else None
    now = datetime.now(UTC)
    seen = [oci_release.layout_serial(layout_dir, channel) if layout_dir else None,
            *(oci_release.pushed_serial(url, credentials=credentials, ca_file=ca_file)
              for url in push_urls)]
    try:
        fresh = {"serial": next_serial(max((x for x in seen if x is not None), default=None),
                                       now, serial),
                 "expires": expires_at(now, expires_in_days)}
    except FreshnessError as exc:
        raise ReleaseError(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="release-") as scratch:
        source = build_agent(version, Path(scratch) / "agent") if binary is None else Path(binary)
        digest = hashlib.sha256()
        size = 0
        for chunk in read_chunks(source):
            digest.update(chunk)
            size += len(chunk)
        files = {platform: (digest.hexdigest(), size) for platform in PLATFORMS}
        builds = {p: (source, sha, n) for p, (sha, n) in files.items()}
        patches = _make_deltas(bases, builds)
        date = format_release_date(release_date or now)
        built = build_manifest(version, "oci:", date, files)
        _list_deltas(built, {p: [oci_release.patch_entry(x.base_sha256, x.data) for x in xs]
                             for p, xs in patches.items()})
        manifest = oci_release.oci_manifest(stamp(built, channel=channel, **fresh))
        body = (json.dumps(manifest, indent=2) + "\n").encode()
        release = oci_release.build(
            version, builds, body, sign(body, secret) if secret is not None else None,
            patches={p: [(x.data, x.name(p)) for x in xs] for p, xs in patches.items()})
        if layout_dir is not None:
            oci_release.write_layout(Path(layout_dir), release, channel)
            log(f"wrote OCI layout {layout_dir} = {release.index_digest} (version {version})")
        for url in push_urls:
            oci_release.push(url, release, credentials=credentials, ca_file=ca_file, log=log)
    return manifest


def _freshness(previous: Path, now: datetime, expires_in_days: float | None,
               serial: int | None) -> dict[str, Any]:
    try:
        return {"serial": next_serial(previous_serial(previous), now, serial),
                "expires": expires_at(now, expires_in_days)}
    except FreshnessError as exc:
        raise ReleaseError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["resign"]:
        return main_resign(argv[1:])
    if argv[:1] == ["promote"]:
        return main_promote(argv[1:])
    parser = argparse.ArgumentParser(
        prog="release-local.sh", description="Build (or take) the agent and publish it."
    )
    parser.add_argument("version", metavar="VERSION")
    freshness_options(parser)
    parser.add_argument("--binary", type=Path, metavar="FILE", help="publish FILE as is")
    parser.add_argument("--release-dir", type=Path, default=DEFAULT_RELEASE_DIR, metavar="DIR")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL")
    parser.add_argument("--sign-key", type=Path, metavar="FILE",
                        help="unencrypted minisign secret key: also write version.json.minisig")
    parser.add_argument("--channel", default="stable", metavar="NAME",
                        help="publish on channel NAME: channels/NAME/version.json (default "
                             "stable: version.json); with --oci-push/--oci-layout the signed "
                             "manifest's channel and the layout's ref name")
    parser.add_argument("--assets-dir", type=Path, metavar="DIR",
                        help="write a GitHub release's assets into DIR instead of publishing")
    parser.add_argument("--github-repo", metavar="OWNER/REPO",
                        help="with --assets-dir: URLs of github.com/OWNER/REPO release vVERSION")
    parser.add_argument("--delta-from", action="append", default=[], metavar="FILE|VERSION",
                        help="also publish patches from this earlier build (a file, or a "
                             "version published in --release-dir) to the new one, per "
                             "platform; repeatable")
    parser.add_argument("--oci-push", metavar="oci://HOST[:PORT]/REPO:TAG", action="append",
                        help="push the release to a registry as an OCI artifact instead; "
                             "repeatable (the same release to each, e.g. a mirror)")
    parser.add_argument("--oci-layout", type=Path, metavar="DIR",
                        help="write the release as an OCI image layout (an offline bundle) "
                             "into DIR instead")
    parser.add_argument("--registry-credentials", type=Path, metavar="FILE",
                        help="with --oci-push: Docker config.json holding the registry's "
                             "auths.HOST.auth")
    parser.add_argument("--ca-file", type=Path, metavar="FILE",
                        help="with --oci-push: extra trusted CA bundle (PEM)")
    args = parser.parse_args(argv)
    if args.oci_push is not None or args.oci_layout is not None:
        return _main_oci(args)
    if args.assets_dir is not None:
        return _main_assets(args)
    release_dir: Path = args.release_dir
    manifest, code = run_command(lambda: publish(
        args.version, release_dir, args.base_url, binary=args.binary, sign_key=args.sign_key,
        serial=args.serial, channel=args.channel, delta_from=args.delta_from,
        expires_in_days=None if args.no_expires else args.expires_in))
    if manifest is None:
        return code
    for platform, entry in manifest["binaries"].items():
        path = release_dir / "bin" / args.version / f"agent-{platform}"
        print(f"published {path} sha256={entry['sha256']} size={entry['size']}")
    print(f"published {channel_manifest(release_dir, args.channel)} version={args.version} "
          f"serial={manifest['serial']} expires={manifest.get('expires', 'never')} "
          f"({args.base_url})")
    if args.sign_key is not None:
        print(f"signed {channel_manifest(release_dir, args.channel)}.minisig with "
              f"{args.sign_key}")
    return 0


def _main_oci(args: argparse.Namespace) -> int:
    from oci_release import PushError

    _, code = run_command(lambda: publish_oci(
        args.version, push_urls=tuple(args.oci_push or ()), layout_dir=args.oci_layout,
        binary=args.binary, sign_key=args.sign_key, credentials=args.registry_credentials,
        ca_file=args.ca_file, serial=args.serial, channel=args.channel,
        delta_from=args.delta_from, release_dir=args.release_dir,
        expires_in_days=None if args.no_expires else args.expires_in), (PushError, OSError))
    return code


def _main_assets(args: argparse.Namespace) -> int:
    manifest, code = run_command(lambda: write_assets(
        args.version, args.assets_dir, github_repo=args.github_repo, base_url=args.base_url,
        binary=args.binary, sign_key=args.sign_key, serial=args.serial,
        delta_from=args.delta_from,
        expires_in_days=None if args.no_expires else args.expires_in))
    if manifest is None:
        return code
    names = sorted(p.name for p in Path(args.assets_dir).iterdir() if not p.name.startswith("."))
    print(f"assets for v{manifest['version']} in {args.assets_dir}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
