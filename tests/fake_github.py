"""A fake GitHub on loopback over TLS: the REST API, github.com downloads, the objects host.

    with FakeGitHub(ca) as gh:
        gh.add_release("v0.1.1", {"agent-linux-amd64": data, "agent-linux-arm64": data})
        # --github-repo gh.repo --github-api-url gh.api_url, or
        # --manifest-url gh.latest_download_url("version.json")

Three servers with three origins, as on GitHub: ``api`` (api.github.com) answers
``/repos/OWNER/NAME/releases/latest`` (the newest release that is neither a draft nor a
prerelease; 404 when there is none) and ``/releases?per_page=30`` (all of them, newest first)
with the real JSON shapes, weak ETags and 304s; ``web`` (github.com) answers
``/OWNER/NAME/releases/download/TAG/NAME`` and ``/OWNER/NAME/releases/latest/download/NAME``
with 302s; ``objects`` (objects.githubusercontent.com) serves the bytes.
:meth:`FakeGitHub.rate_limit` makes the API answer 403 with the rate-limit headers until
:meth:`FakeGitHub.lift_rate_limit`. Every request is in each server's ``requests``.
"""

from __future__ import annotations

import hashlib
import json
from types import TracebackType
from typing import Any

import trustme
from release_server import ReleaseServer, Route, tls_context

PER_PAGE = 30


class FakeGitHub:
    def __init__(self, ca: trustme.CA, repo: str = "acme/agent") -> None:
        context = tls_context(ca)
        self.repo = repo
        self.api = ReleaseServer(context)
        self.web = ReleaseServer(context, host="localhost")
        self.objects = ReleaseServer(context)
        self.releases: list[dict[str, Any]] = []  # newest first, as the API lists them
        self.limited: dict[str, str] | None = None
        self._ids = 0

    def __enter__(self) -> FakeGitHub:
        for server in (self.api, self.web, self.objects):
            server.__enter__()
        self._refresh()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in (self.api, self.web, self.objects):
            server.__exit__(exc_type, exc, tb)

    @property
    def api_url(self) -> str:
        return self.api.url("")

    @property
    def latest_path(self) -> str:
        return f"/repos/{self.repo}/releases/latest"

    def latest_download_url(self, name: str) -> str:
        return self.web.url(f"/{self.repo}/releases/latest/download/{name}")

    def download_url(self, tag: str, name: str) -> str:
        return self.web.url(f"/{self.repo}/releases/download/{tag}/{name}")

    def add_release(
        self,
        tag: str,
        assets: dict[str, bytes],
        *,
        draft: bool = False,
        prerelease: bool = False,
        digests: bool = True,
        digest_override: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Publish a release (newest first); ``digests=False`` mimics assets from before 2025."""
        self._ids += 1
        rid = self._ids
        entries = []
        for index, (name, data) in enumerate(assets.items()):
            obj = f"/github-production-release-asset/{rid}/{index}"
            self.objects.publish(obj, Route(body=data, headers={
                "Content-Type": "application/octet-stream"}))
            self.web.publish(f"/{self.repo}/releases/download/{tag}/{name}",
                             Route.redirect(self.objects.url(obj)))
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}" if digests else None
            if digest_override and name in digest_override:
                digest = digest_override[name]
            entries.append({
                "url": self.api.url(f"/repos/{self.repo}/releases/assets/{rid * 100 + index}"),
                "id": rid * 100 + index, "name": name, "label": "", "state": "uploaded",
                "content_type": "application/octet-stream", "size": len(data),
                "digest": digest, "download_count": 0,
                "created_at": "2026-02-10T21:00:00Z", "updated_at": "2026-02-10T21:00:00Z",
                "browser_download_url": self.download_url(tag, name),
            })
        release = {
            "url": self.api.url(f"/repos/{self.repo}/releases/{rid}"), "id": rid,
            "html_url": self.web.url(f"/{self.repo}/releases/tag/{tag}"),
            "tag_name": tag, "target_commitish": "main", "name": tag, "body": "notes",
            "draft": draft, "prerelease": prerelease, "created_at": "2026-02-10T21:00:00Z",
            "published_at": None if draft else "2026-02-10T21:00:00Z", "assets": entries,
        }
        self.releases.insert(0, release)
        self._refresh()
        return release

    def rate_limit(self, reset_epoch: int, *, status: int = 403) -> None:
        """The API answers every request as rate-limited until ``lift_rate_limit``."""
        self.limited = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
                        "x-ratelimit-used": "60", "x-ratelimit-reset": str(reset_epoch),
                        "x-ratelimit-resource": "core"}
        self._refresh()

    def lift_rate_limit(self) -> None:
        self.limited = None
        self._refresh()

    def api_requests(self) -> list[Any]:
        return [r for r in self.api.requests if r.path.startswith(f"/repos/{self.repo}/")]

    def _refresh(self) -> None:
        listing = f"/repos/{self.repo}/releases?per_page={PER_PAGE}"
        if self.limited is not None:
            body = json.dumps({
                "message": "API rate limit exceeded for 127.0.0.1.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits"}).encode()
            for path in (self.latest_path, listing):
                self.api.publish(path, Route(status=403, body=body, headers={
                    **self.limited, "Content-Type": "application/json"}))
            return
        published = [r for r in self.releases if not r["draft"] and not r["prerelease"]]
        if published:
            self.api.publish(self.latest_path, _json_route(published[0]))
        else:
            self.api.publish(self.latest_path, Route(status=404, body=json.dumps(
                {"message": "Not Found", "status": "404"}).encode()))
        self.api.publish(listing, _json_route(self.releases[:PER_PAGE]))
        if published:
            tag = published[0]["tag_name"]
            for asset in published[0]["assets"]:
                self.web.publish(f"/{self.repo}/releases/latest/download/{asset['name']}",
                                 Route.redirect(self.download_url(tag, asset["name"])))


def _json_route(document: Any) -> Route:
    body = json.dumps(document, indent=2).encode()
    return Route(body=body, etag=f'W/"{hashlib.sha256(body).hexdigest()[:32]}"', headers={
        "Content-Type": "application/json; charset=utf-8", "x-ratelimit-limit": "60",
        "x-ratelimit-remaining": "59", "x-github-api-version-selected": "2022-11-28"})
