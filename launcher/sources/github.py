"""Releases from the GitHub REST API (``--github-repo OWNER/NAME``), turned into a manifest.

One conditional ``GET {api}/repos/OWNER/NAME/releases/latest`` (``/releases`` when
prereleases are wanted; drafts are always skipped) answers the poll. From the release the
source builds the seed-format manifest the worker parses anyway: the version is the tag
without a leading ``v``, the binary is the asset named exactly ``agent-<platform>``, with
its ``browser_download_url``, ``size`` and the sha256 of its ``digest`` (``sha256:<hex>``)
or, for assets uploaded before GitHub computed digests, of the ``SHA256SUMS`` asset.

The token (``GITHUB_TOKEN``; a running launcher hands it over in the worker's request) is
sent as a bearer token on API requests only; httpx
drops it on a redirect to another origin, and downloads never carry it. A rate-limited
answer (403 or 429 with ``x-ratelimit-remaining: 0``, or with ``Retry-After``) becomes a
:class:`TransportError` whose ``retry_after_s`` is the time left until the reset.

Signed mode (public keys configured, ``signed=True``): the manifest is not built but taken
as published, the release's ``version.json`` asset, and :meth:`GitHubSource.fetch_signature`
returns its ``version.json.minisig`` asset, so the worker verifies the very bytes it parses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from launcher.errors import ManifestError, SignatureError, SourceError, TransportError
from launcher.sources.base import FetchResult, Validators
from launcher.sources.http import (
    METADATA_DEADLINE_S,
    MIN_SPEED_BPS,
    metadata_pace,
    parse_retry_after,
    read_capped,
    status_error,
    transport_error,
)
from launcher.sources.pace import SPEED_WINDOW_S, Pace

logger = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
DEFAULT_API_URL = "https://api.github.com"
SUMS_ASSET = "SHA256SUMS"
MANIFEST_ASSET = "version.json"
SIGNATURE_ASSET = "version.json.minisig"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_API_BYTES = 4 << 20  # a release list with long notes and many assets
MAX_SUMS_BYTES = 64 * 1024
_RELEASES_PER_PAGE = 30
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Asset(_Model):
    name: str
    size: int
    browser_download_url: str
    digest: str | None = None


class Release(_Model):
    tag_name: str
    draft: bool = False
    prerelease: bool = False
    published_at: str | None = None
    assets: list[Asset] = []  # pydantic copies the default per instance


# ---- pure: from API answers to a manifest ------------------------------------------


def parse_releases(body: bytes, *, many: bool) -> list[Release]:
    """The release (``many=False``) or list of releases in an API answer."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise ManifestError("GitHub API answer is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"GitHub API answer is not valid JSON: {exc}") from exc
    items = document if many else [document]
    if not isinstance(items, list):
        raise ManifestError("GitHub API answer is not a list of releases")
    try:
        return [Release.model_validate(item) for item in items]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ManifestError(f"GitHub release field '{where}': {first['msg']}") from exc


def pick_release(releases: list[Release], *, prereleases: bool) -> Release:
    """The newest usable release: never a draft, a prerelease only when asked for.

    The API lists releases newest first, so the first usable one wins.
    """
    for release in releases:
        if release.draft or (release.prerelease and not prereleases):
            continue
        return release
    kinds = "published releases" if prereleases else "published non-prerelease releases"
    raise ManifestError(f"the repository has no {kinds}")


def asset_name(platform: str) -> str:
    return f"agent-{platform}"


def find_asset(release: Release, name: str) -> Asset | None:
    return next((a for a in release.assets if a.name == name), None)


def digest_sha256(asset: Asset) -> str | None:
    """The hex sha256 of an asset's ``digest`` field (``sha256:<hex>``), if it has one."""
    if asset.digest is None:
        return None
    algorithm, _, value = asset.digest.partition(":")
    if algorithm.lower() != "sha256" or not _HEX64.fullmatch(value):
        return None
    return value.lower()


def parse_sums(text: str) -> dict[str, str]:
    """``<hex>  <name>`` lines (``sha256sum`` output, ``*`` binary marker allowed) as a dict."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not _HEX64.fullmatch(parts[0]):
            continue
        sums[parts[1].removeprefix("*")] = parts[0].lower()
    return sums


def release_manifest(release: Release, platform: str, sha256: str) -> dict[str, Any]:
    """The seed-format manifest for ``platform``'s asset of ``release``."""
    asset = find_asset(release, asset_name(platform))
    assert asset is not None
    return {
        "version": release.tag_name.removeprefix("v").removeprefix("V"),
        "release_date": release.published_at,
        "binaries": {platform: {"url": asset.browser_download_url, "sha256": sha256,
                                "size": asset.size}},
    }


def rate_limit_wait(headers: Mapping[str, str], now_s: float) -> float | None:
    """Seconds until a rate-limited answer may be retried, or None when it is not one."""
    retry_after = parse_retry_after(headers.get("retry-after"), datetime.fromtimestamp(now_s, UTC))
    if retry_after is not None:
        return retry_after
    reset = headers.get("x-ratelimit-reset", "").strip()
    if headers.get("x-ratelimit-remaining", "").strip() == "0" and reset.isdigit():
        return max(float(reset) - now_s, 0.0)
    return None


# ---- I/O ------------------------------------------------------------------------------


class GitHubSource:
    """The latest release of one repository, fetched conditionally, as manifest bytes."""

    def __init__(
        self,
        repo: str,
        *,
        client: httpx.Client,
        platform: str,
        api_url: str = DEFAULT_API_URL,
        token: str | None = None,
        prereleases: bool = False,
        signed: bool = False,
        now: Callable[[], float] = time.time,
        deadline_s: float = METADATA_DEADLINE_S,
        min_speed_bps: float = MIN_SPEED_BPS,
        speed_window_s: float = SPEED_WINDOW_S,
    ) -> None:
        self.repo = repo
        self.platform = platform
        self.prereleases = prereleases
        self.signed = signed
        self._release: Release | None = None
        base = f"{api_url.rstrip('/')}/repos/{repo}/releases"
        self.url = f"{base}?per_page={_RELEASES_PER_PAGE}" if prereleases else f"{base}/latest"
        self._client = client
        self._token = token
        self._now = now
        self._limits = (deadline_s, min_speed_bps, speed_window_s)

    def fetch(self, validators: Validators | None) -> FetchResult:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        if self._token:
            if httpx.URL(self.url).scheme == "https":
                headers["Authorization"] = f"Bearer {self._token}"
            else:
                logger.warning("not sending GITHUB_TOKEN over plain http to %s", self.url)
        if validators is not None and validators.etag is not None:
            headers["If-None-Match"] = validators.etag
        if validators is not None and validators.last_modified is not None:
            headers["If-Modified-Since"] = validators.last_modified
        pace = metadata_pace(f"GitHub API request to {self.url}", *self._limits)
        try:
            with pace.deadline(), self._client.stream(
                    "GET", self.url, headers=headers,
                    timeout=pace.timeout(self._client.timeout)) as response:
                received = Validators(etag=response.headers.get("etag"),
                                      last_modified=response.headers.get("last-modified"))
                if response.status_code == 304 and validators:
                    logger.debug("GitHub release of %s not modified", self.repo)
                    return FetchResult(not_modified=True, body=None,
                                       validators=received or validators)
                self._raise_for_status(response)
                body = _read_capped(response, MAX_API_BYTES, "GitHub API answer", pace=pace)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(self.url, exc) from exc
        release = pick_release(parse_releases(body, many=self.prereleases),
                               prereleases=self.prereleases)
        self._release = release
        if self.signed:
            published = _required(release, MANIFEST_ASSET, ManifestError)
            logger.info("GitHub release %s of %s: taking its signed %s", release.tag_name,
                        self.repo, MANIFEST_ASSET)
            return FetchResult(not_modified=False, validators=received, body=self._download(
                published.browser_download_url, MAX_MANIFEST_BYTES, MANIFEST_ASSET))
        manifest = release_manifest(release, self.platform, self._sha256(release))
        logger.info("GitHub release %s of %s: %s", release.tag_name, self.repo,
                    manifest["binaries"][self.platform]["url"])
        return FetchResult(not_modified=False, body=json.dumps(manifest).encode(),
                           validators=received)

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        if response.status_code in (403, 429):
            wait = rate_limit_wait(response.headers, self._now())
            if wait is not None:
                raise TransportError(
                    f"GitHub API rate limit reached for {response.request.url}"
                    f" (HTTP {response.status_code}): retry in {wait:.0f}s",
                    retry_after_s=wait,
                )
        raise status_error("GitHub API request to", response,
                           lambda: datetime.fromtimestamp(self._now(), UTC))

    def _sha256(self, release: Release) -> str:
        name = asset_name(self.platform)
        asset = find_asset(release, name)
        if asset is None:
            have = ", ".join(a.name for a in release.assets) or "none"
            raise ManifestError(
                f"GitHub release {release.tag_name} has no asset named {name} (has: {have})")
        sha = digest_sha256(asset)
        if sha is not None:
            return sha
        sums_asset = find_asset(release, SUMS_ASSET)
        if sums_asset is None:
            raise ManifestError(f"GitHub release {release.tag_name}: asset {name} has no sha256"
                                f" digest and there is no {SUMS_ASSET} asset")
        sums = parse_sums(self._download(sums_asset.browser_download_url, MAX_SUMS_BYTES,
                                         SUMS_ASSET).decode("utf-8", errors="replace"))
        if name not in sums:
            raise ManifestError(
                f"GitHub release {release.tag_name}: {SUMS_ASSET} has no line for {name}")
        return sums[name]

    def fetch_signature(self, max_bytes: int) -> bytes:
        """The ``version.json.minisig`` asset of the release the last fetch returned."""
        if self._release is None or not self.signed:
            raise SignatureError("no signed GitHub release fetched yet")
        asset = _required(self._release, SIGNATURE_ASSET, SignatureError)
        return self._download(asset.browser_download_url, max_bytes, SIGNATURE_ASSET,
                              SignatureError)

    def _download(self, url: str, limit: int, what: str,
                  too_large: type[SourceError] = ManifestError) -> bytes:
        """A small asset (never the binary), without the token, read up to ``limit``."""
        pace = metadata_pace(f"download of {what} from {url}", *self._limits)
        try:
            with pace.deadline(), self._client.stream(
                    "GET", url, timeout=pace.timeout(self._client.timeout)) as response:
                if not response.is_success:
                    raise status_error("download of", response,
                                       lambda: datetime.fromtimestamp(self._now(), UTC))
                return _read_capped(response, limit, what, too_large, pace)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_error(url, exc) from exc


def from_settings(s: Mapping[str, Any], client: httpx.Client,
                  environ: Mapping[str, str] | None = None) -> GitHubSource:
    """The source for the worker's settings. The token comes in the request from a running
    launcher (``github_token``), or from ``GITHUB_TOKEN`` for a ``check`` run in-process."""
    env = os.environ if environ is None else environ
    return GitHubSource(
        str(s["github_repo"]), client=client, platform=str(s["platform"]),
        api_url=str(s.get("github_api_url") or DEFAULT_API_URL),
        token=str(s.get("github_token") or env.get("GITHUB_TOKEN") or "") or None,
        prereleases=bool(s.get("github_prerelease")),
        signed=bool(s.get("public_keys")),
        deadline_s=float(s.get("metadata_deadline_s") or METADATA_DEADLINE_S),
        min_speed_bps=float(s.get("min_speed_bps") or MIN_SPEED_BPS),
    )


def _required(release: Release, name: str, error: type[SourceError]) -> Asset:
    asset = find_asset(release, name)
    if asset is None:
        raise error(f"GitHub release {release.tag_name} has no {name} asset")
    return asset


def _read_capped(response: httpx.Response, limit: int, what: str,
                 error: type[SourceError] = ManifestError, pace: Pace | None = None) -> bytes:
    return read_capped(response, limit, error(f"{what} larger than {limit} bytes"), pace)
