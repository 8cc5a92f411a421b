"""Real OCI registries on loopback: Debian's ``docker-registry`` with TLS and auth.

    tokens = TokenServer(ca, users={"alice": "wonderland"}, public=("public/",))
    with tokens, RegistryProcess(tmp, ca, auth=tokens.auth_config()) as registry:
        registry.host                         # "127.0.0.1:PORT"
    RegistryProcess(tmp, ca, auth=htpasswd_auth(tmp, "alice", "wonderland"))  # Basic
    RegistryProcess(tmp, ca)                                                  # anonymous
    RegistryProcess(tmp, ca, redirect_to="https://storage:PORT")   # blobs 307 to storage

The token server is the other half of the registry's ``auth: token``: it answers
``GET /token?service=...&scope=repository:NAME:pull,push`` with an ES256 JWT signed by a key
whose self-signed certificate is the registry's ``rootcertbundle`` (sent as ``x5c``). A user
with the right password gets every action asked for; an anonymous request gets ``pull`` on
repositories under a ``public`` prefix and nothing else; a wrong password is a 401.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from conftest import free_port, unavailable
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "test-registry"
ISSUER = "test-token-issuer"
LEEWAY_S = 60  # docker-registry accepts a token this long past its exp (clock skew)


def registry_binary() -> str:
    found = shutil.which("docker-registry")
    if found is None:
        unavailable("docker-registry is not installed (apt-get install -y docker-registry)")
    assert found is not None
    return found


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """An https token server (a thread) that signs JWTs the registry verifies."""

    def __init__(self, ca: Any, directory: Path, *, users: dict[str, str],
                 public: tuple[str, ...] = ()) -> None:
        self.users = users
        self.public = public
        self.requests: list[dict[str, str]] = []
        self.lifetime_s = 300  # how long a token is usable: its expires_in
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
        now = datetime.now(UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(hours=1))
                     .not_valid_after(now + timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.bundle = directory / "token-signer.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._context)
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self._httpd is not None
        return f"https://127.0.0.1:{self._httpd.server_address[1]}/token"

    def auth_config(self) -> dict[str, Any]:
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.bundle)}}

    def grant(self, user: str | None, password: str | None,
              scope: str) -> list[dict[str, Any]] | None:
        """The access a request gets, or None for a wrong password."""
        if user is not None and self.users.get(user) != password:
            return None
        access = []
        for item in filter(None, scope.split(" ")):
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if user is None:
                wanted = ["pull"] if "pull" in wanted and name.startswith(self.public) \
                    and self.public else []
            access.append({"type": kind, "name": name, "actions": wanted})
        return access

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        issued = time.time()
        now = int(issued)
        # exp rounded up, so the token lives at least expires_in (the launcher drops it at
        # 90% of that): rounded down, a 3 s token could be refused up to 1 s early.
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE,
                  "exp": math.ceil(issued) + self.lifetime_s - LEEWAY_S,
                  "nbf": now - 10, "iat": now,
                  "jti": f"{now}-{id(access)}", "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def __enter__(self) -> TokenServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        httpd.daemon_threads = True
        httpd.socket = self._context.wrap_socket(httpd.socket, server_side=True)
        httpd.tokens = self  # type: ignore[attr-defined]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()


class _TokenHandler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        tokens: TokenServer = self.server.tokens  # type: ignore[attr-defined]
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        user = password = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        tokens.requests.append({**query, "user": user or ""})
        access = tokens.grant(user, password, query.get("scope", ""))
        if access is None or query.get("service") != SERVICE:
            body, status = b'{"details": "wrong user or password"}', 401
        else:
            token = tokens.token(user or "", access)
            body, status = json.dumps({"token": token, "access_token": token,
                                       "expires_in": tokens.lifetime_s}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def htpasswd_auth(directory: Path, user: str, password: str) -> dict[str, Any]:
    """The registry's ``auth: htpasswd`` with one bcrypt entry (``htpasswd -B``)."""
    tool = shutil.which("htpasswd")
    if tool is None:
        unavailable("htpasswd is not installed (apt-get install -y apache2-utils)")
    assert tool is not None
    line = subprocess.run([tool, "-Bbn", user, password], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = directory / "htpasswd"
    path.write_text(line + "\n")
    return {"htpasswd": {"realm": "test-registry", "path": str(path)}}


def docker_config(path: Path, host: str, user: str, password: str) -> Path:
    """A Docker ``config.json`` holding ``user:password`` for ``host``."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    path.chmod(0o600)
    return path


class RegistryProcess:
    """``docker-registry serve`` on a loopback port with a ``trustme`` certificate."""

    def __init__(self, directory: Path, ca: Any, *, auth: dict[str, Any] | None = None,
                 redirect_to: str | None = None) -> None:
        self.redirect_to = redirect_to
        self.directory = directory
        self.data = directory / "data"
        self.ca = ca
        self.auth = auth
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RegistryProcess:
        binary = registry_binary()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.directory / "registry.key"))
        (self.directory / "registry.crt").write_bytes(
            b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.data)},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "test-secret",
                     "tls": {"certificate": str(self.directory / "registry.crt"),
                             "key": str(self.directory / "registry.key")}},
        }
        if self.auth is not None:
            config["auth"] = self.auth
        if self.redirect_to is not None:  # blob GETs answered 307 to {redirect_to}/docker/...
            config["middleware"] = {"storage": [{"name": "redirect",
                                                 "options": {"baseurl": self.redirect_to}}]}
        path = self.directory / "config.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        log = (self.directory / "registry.log").open("ab")
        self.proc = subprocess.Popen([binary, "serve", str(path)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        with httpx.Client(verify=self._verify()) as client:
            while True:
                try:
                    client.get(f"https://{self.host}/v2/", timeout=2)
                    break
                except httpx.HTTPError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError("docker-registry did not start:\n" +
                                             (self.directory / "registry.log").read_text()) \
                            from None
                    time.sleep(0.05)
        return self

    def _verify(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (filesystem storage)."""
        hex_ = digest.removeprefix("sha256:")
        return (self.data / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] /
                hex_ / "data")

    def stored_blobs(self) -> dict[str, bytes]:
        """Every blob's storage path (as the redirect names it) and bytes."""
        return {"/" + str(path.relative_to(self.data)): path.read_bytes()
                for path in (self.data / "docker" / "registry" / "v2" / "blobs").rglob("data")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class CuttingRelay:
    """A TCP relay on loopback in front of ``target`` (TLS passes through untouched) that
    closes a connection once it has carried more than ``cuts[0]`` bytes towards the client,
    then the next cut for the next connection that gets that far. Only a large transfer (a
    blob) reaches a cut; the registry's small answers pass whole."""

    def __init__(self, target: str, cuts: list[int]) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.cuts = list(cuts)
        self.to_client: list[int] = []  # bytes carried towards the client, per connection
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection((self.target_host, self.target_port)) as server:
            with self._lock:
                index = len(self.to_client)
                self.to_client.append(0)
            up = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            up.start()
            with self._lock:
                cut = self.cuts[0] if self.cuts else None
            carried = 0
            while data := _recv(server):
                if cut is not None and carried + len(data) > cut:
                    with self._lock:
                        if self.cuts and self.cuts[0] == cut:
                            self.cuts.pop(0)
                    client.sendall(data[:cut - carried])
                    carried = cut
                    break
                client.sendall(data)
                carried += len(data)
                with self._lock:
                    self.to_client[index] = carried
            with self._lock:
                self.to_client[index] = carried
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            up.join(5)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        while data := _recv(src):
            try:
                dst.sendall(data)
            except OSError:
                return

    def __enter__(self) -> CuttingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(5)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
