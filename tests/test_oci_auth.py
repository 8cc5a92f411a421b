"""Where registry credentials may go: the registry itself and the https realm it names.

httpx.MockTransport plays registry, token server, blob storage and a collector of stolen
passwords; tests/test_oci.py has the same through Debian's real docker-registry.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest

from launcher.errors import TransportError
from launcher.sources.http import make_client
from launcher.sources.registry import AuthError, Registry

SCOPE = "repository:agent:pull"
LOGIN = {"reg.example": ("alice", "s3cret")}
Handler = Callable[[httpx.Request], httpx.Response]


def challenge(realm: str) -> httpx.Response:
    return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",'
                                                            'service="reg"'})


def registry_with_storage(seen: list[httpx.Request], storage_realm: str) -> Handler:
    """Blobs redirect to storage.example, which asks for a token of its own realm."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        host = request.url.host
        if host == "auth.reg.example":
            return httpx.Response(200, json={"token": "REGTOKEN"})
        if host == "collector.example":
            return httpx.Response(200, json={"token": "EVIL"})
        if host == "storage.example":
            return challenge(storage_realm)
        if request.headers.get("authorization") != "Bearer REGTOKEN":
            return challenge("https://auth.reg.example/token")
        if "/blobs/" in request.url.path:
            return httpx.Response(307, headers={"Location": "https://storage.example/b"})
        return httpx.Response(200, content=b"{}")
    return handler


def test_a_challenge_from_blob_storage_is_an_error_not_answered() -> None:
    """Blob storage on another origin answers 401 with its own Bearer realm: no request
    reaches that realm, the registry's cached token stays, and the error names storage."""
    seen: list[httpx.Request] = []
    handler = registry_with_storage(seen, "https://collector.example/t")
    with make_client(transport=httpx.MockTransport(handler)) as client:
        registry = Registry("reg.example", client=client, credentials=LOGIN)
        registry.request("GET", "agent/manifests/stable", SCOPE, limit=1024)
        assert registry.auth_headers(SCOPE) == {"Authorization": "Bearer REGTOKEN"}
        with pytest.raises(AuthError, match=r"https://storage\.example/b answered HTTP 401"):
            registry.request("GET", "agent/blobs/sha256:" + "a" * 64, SCOPE, limit=1024)
        assert registry.auth_headers(SCOPE) == {"Authorization": "Bearer REGTOKEN"}
    assert not [r for r in seen if r.url.host == "collector.example"]
    assert all("authorization" not in r.headers for r in seen if r.url.host == "storage.example")


def test_a_challenge_naming_the_registry_realm_from_storage_is_not_answered_either() -> None:
    """Even a storage challenge that names the registry's own realm is not the registry's:
    the token server is asked only once, for the registry's challenge."""
    seen: list[httpx.Request] = []
    handler = registry_with_storage(seen, "https://auth.reg.example/token")
    with make_client(transport=httpx.MockTransport(handler)) as client:
        registry = Registry("reg.example", client=client, credentials=LOGIN)
        with pytest.raises(AuthError, match=r"storage\.example"):
            registry.request("GET", "agent/blobs/sha256:" + "a" * 64, SCOPE, limit=1024)
    assert len([r for r in seen if r.url.host == "auth.reg.example"]) == 1


def test_a_mirror_redirected_to_the_origin_does_not_answer_the_origin_challenge() -> None:
    """A mirror that redirects to the origin: the origin's 401 is not the mirror's to
    answer (the mirror's credentials would go to the origin's realm)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "mirror.example":
            return httpx.Response(307, headers={"Location": "https://reg.example/v2/x"})
        if request.url.host == "auth.reg.example":
            return httpx.Response(200, json={"token": "T"})
        return challenge("https://auth.reg.example/token")

    with make_client(transport=httpx.MockTransport(handler)) as client:
        mirror = Registry("mirror.example", client=client,
                          credentials={"mirror.example": ("bob", "mirrorpass")})
        with pytest.raises(TransportError, match=r"reg\.example/v2/x answered HTTP 401"):
            mirror.request("GET", "agent/manifests/stable", SCOPE, limit=1024)
    assert not [r for r in seen if r.url.host == "auth.reg.example"]


def test_a_plain_http_realm_is_refused_even_with_allow_http() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T"})
        return challenge("http://auth.example/token")

    with make_client(allow_http=True, transport=httpx.MockTransport(handler)) as client:
        registry = Registry("reg.example", client=client, credentials=LOGIN)
        with pytest.raises(AuthError, match="not https"):
            registry.request("GET", "agent/manifests/stable", SCOPE, limit=1024)
    assert [r.url.host for r in seen] == ["reg.example"]


@pytest.mark.parametrize("host", ["reg.example:443", "reg.example"])
@pytest.mark.parametrize("filed", ["reg.example", "reg.example:443"])
def test_the_default_port_written_or_not_is_the_same_registry(host: str, filed: str) -> None:
    """``oci://HOST:443/...``: the token goes with the request (httpx drops :443 from the
    URL), and the password filed under HOST or HOST:443 is the host's."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "T"})
        if request.headers.get("authorization") == "Bearer T":
            return httpx.Response(200, content=b"{}")
        return challenge("https://auth.example/token")

    with make_client(transport=httpx.MockTransport(handler)) as client:
        registry = Registry(host, client=client, credentials={filed: ("alice", "s3cret")})
        response, body = registry.request("GET", "agent/manifests/stable", SCOPE, limit=1024)
    assert response.status_code == 200 and body == b"{}"
    token = next(r for r in seen if r.url.host == "auth.example")
    assert token.headers["authorization"] == "Basic " + base64.b64encode(
        b"alice:s3cret").decode()


def test_a_realm_redirecting_elsewhere_does_not_carry_the_password() -> None:
    """The token server redirects to another origin: the password stays behind."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example":
            return httpx.Response(302, headers={"Location": "https://other.example/token"})
        if request.url.host == "other.example":
            return httpx.Response(200, json={"token": "T"})
        if request.headers.get("authorization") == "Bearer T":
            return httpx.Response(200, content=b"{}")
        return challenge("https://auth.example/token")

    with make_client(transport=httpx.MockTransport(handler)) as client:
        registry = Registry("reg.example", client=client, credentials=LOGIN)
        registry.request("GET", "agent/manifests/stable", SCOPE, limit=1024)
    assert "authorization" in next(r for r in seen if r.url.host == "auth.example").headers
    assert "authorization" not in next(r for r in seen if r.url.host == "other.example").headers
