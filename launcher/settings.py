"""The launcher's settings: one frozen, validated value built from file, environment, flags.

Each option has one name used three ways: ``--poll-interval`` on the command line,
``poll_interval`` in the TOML config file and ``NGINX_MANAGER_POLL_INTERVAL`` in the
environment. Flags win over the environment, the environment over the file. Times are
seconds (decimals allowed). Standard library only: the resident supervisor loads this.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform as _platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from launcher.errors import ConfigError
from launcher.redact import redact

ENV_PREFIX = "NGINX_MANAGER_"
PLATFORMS = ("linux-amd64", "linux-arm64")
MODES = ("auto", "standalone", "container")
LOG_FORMATS = ("text", "json")
GITHUB_API_URL = "https://api.github.com"
_GITHUB_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
SERIAL_LIMIT = 1 << 63  # a manifest serial is a signed 64-bit integer, >= 0


@dataclass(frozen=True)
class Settings:
    manifest_url: str | None = None
    github_repo: str | None = None
    github_api_url: str = GITHUB_API_URL
    github_prerelease: bool = False
    allow_legacy_signatures: bool = False
    allow_unsigned: bool = False
    channel: str = "stable"
    min_serial: int | None = None
    state_dir: Path = Path("/var/lib/nginx-manager")
    poll_interval_s: float = 300.0
    jitter_s: float = 60.0
    health_window_s: float = 60.0
    health_url: str | None = None
    mode: str = "auto"
    platform: str = ""
    allow_http: bool = False
    ca_file: Path | None = None
    public_keys: tuple[Path, ...] = ()
    seed_binary: Path | None = None
    stop_grace_s: float = 10.0
    download_deadline_s: float = 600.0
    max_binary_bytes: int = 1 << 30
    min_speed_bps: float = 8192.0
    metadata_deadline_s: float = 60.0
    registry_credentials: Path | None = None
    mirrors: tuple[str, ...] = ()
    hold: str | None = None  # launcher.controls: the fleet-wide hold's reason
    pin: str | None = None
    windows: tuple[str, ...] = ()  # launcher.window specs
    agent_args: tuple[str, ...] = ()
    proxy: str | None = None  # http://HOST:PORT, or "env" (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)
    proxy_credentials: Path | None = None
    disk_margin_bytes: int = 16 << 20
    metrics_file: Path | None = None
    log_format: str = "text"
    listen: tuple[str, ...] = ()
    ready: str = "health"
    handover: str = "stop-first"
    agent_watchdog_s: float = 10.0

    @property
    def bin_dir(self) -> Path:
        return self.state_dir / "bin"

    @property
    def agent_path(self) -> Path:
        return self.bin_dir / "agent"

    @property
    def signatures(self) -> str:
        """``required`` (a public key is configured) or ``off`` (``--allow-unsigned``)."""
        return "required" if self.public_keys or not self.allow_unsigned else "off"

    def container(self, environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        if self.mode == "auto":
            return "KUBERNETES_SERVICE_HOST" in env
        return self.mode == "container"

    def for_worker(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path)
                    else [str(x) for x in v] if isinstance(v, tuple) else v)
                for k, v in d.items()}


@dataclass(frozen=True)
class Option:
    key: str  # config-file key; the flag is --key-with-dashes, the field may add a unit
    field: str
    parse: Callable[[str], Any]
    help: str
    flag: bool = True  # False: file and environment only
    many: bool = False  # repeatable flag, TOML list, environment items split on ``separator``
    separator: str = ":"  # the environment's item separator for ``many`` (" ": any white space)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} must be greater than 0")
    return value


def _non_negative(text: str) -> float:
    value = _positive(text) if text.strip() not in ("0", "0.0") else 0.0
    return value


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _int_bytes(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive number of bytes")
    return value


def _serial(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 0 <= value < SERIAL_LIMIT:
        raise ValueError(f"{text!r} must be between 0 and 2^63 - 1")
    return value


_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


READY_MODES = ("health", "notify")
HANDOVERS = ("stop-first", "overlap")


def _listen(text: str) -> str:
    from launcher.sockets import parse_listen  # standard library only

    return parse_listen(text).text


def _channel(text: str) -> str:
    if not _CHANNEL.fullmatch(text):
        raise ValueError(f"{text!r} is not a channel name (letters, digits, '.', '_', '-')")
    return text

def _window(text: str) -> str:
    from launcher import window  # standard library (zoneinfo)

    return window.parse(text).spec


def _hold(text: str) -> str | None:
    if len(text) > 500 or not text.isprintable():
        raise ValueError("the hold's reason must be one line of at most 500 characters")
    return text.strip() or None


def _pin(text: str) -> str:
    from launcher import layout

    if not layout.safe_name(text) or not layout.is_version(text):
        raise ValueError(f"{text!r} is not a version (e.g. 1.4.2)")
    return text



def _proxy(text: str) -> str:
    """``env`` or ``http://HOST:PORT``; credentials belong in --proxy-credentials."""
    if text == "env":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        # Not the parser's words: they quote the text it choked on, a password's start maybe.
        raise ValueError(f"{redact(text)!r} is not a valid proxy URL (its port, or "
                         f"'/', '?' or '#' not percent-encoded before the host)") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{redact(text)!r}: use http://HOST:PORT (https origins are "
                         "tunnelled through it with CONNECT) or 'env'")
    if "@" in parts.netloc:
        raise ValueError(f"{redact(text)!r} carries credentials: put user:password in a "
                         "file and pass --proxy-credentials FILE")
    if parts.path not in ("", "/") or parts.query or parts.fragment or port is None:
        raise ValueError(f"{redact(text)!r}: give http://HOST:PORT, nothing else")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("manifest_url", "manifest_url", str,
           "URL of version.json (https://, http:// with --allow-http, or file://), "
           "oci://HOST[:PORT]/REPOSITORY:TAG of a release in a registry, or file:///DIR of "
           "an OCI image layout"),
    Option("github_repo", "github_repo", str,
           "OWNER/NAME: take releases from the GitHub API instead of --manifest-url"),
    Option("github_api_url", "github_api_url", str,
           f"GitHub API root for --github-repo (default {GITHUB_API_URL})"),
    Option("github_prerelease", "github_prerelease", _bool,
           "with --github-repo, also take prereleases (drafts never)"),
    Option("state_dir", "state_dir", Path, "state directory (default /var/lib/nginx-manager)"),
    Option("poll_interval", "poll_interval_s", _positive,
           "seconds between checks (default 300)"),
    Option("jitter", "jitter_s", _non_negative,
           "largest random delay added to each check, the first included; 0 turns it off "
           "(default 60)"),
    Option("health_window", "health_window_s", _positive,
           "seconds a new agent must stay up (and healthy) before it is committed (default 60)"),
    Option("health_url", "health_url", str,
           "agent health URL that must answer 200 during the window (plain http allowed)"),
    Option("mode", "mode", _choice(MODES),
           "auto (container when KUBERNETES_SERVICE_HOST is set), standalone or container"),
    Option("platform", "platform", _choice(PLATFORMS), "binary to fetch (default: this machine)"),
    Option("allow_http", "allow_http", _bool, "allow plain http for the update source"),
    Option("ca_file", "ca_file", Path, "extra trusted CA bundle (PEM)"),
    Option("allow_legacy_signatures", "allow_legacy_signatures", _bool,
           "also accept minisign's legacy (non-prehashed) Ed signatures"),
    Option("public_key", "public_keys", Path,
           "minisign public key file; repeatable (TOML: a list; environment: paths "
           "separated by ':'); manifests must then be signed by one of the keys", many=True),
    Option("allow_unsigned", "allow_unsigned", _bool,
           "run without --public-key, taking manifests nobody signed (signatures off; for "
           "tests and trusted networks only)"),
    Option("channel", "channel", _channel,
           "release channel to follow; a manifest signed for another is refused "
           "(default stable)"),
    Option("min_serial", "min_serial", _serial,
           "lowest manifest serial accepted even with an empty state dir: the floor of the "
           "release this image or package was built from"),
    Option("metadata_deadline", "metadata_deadline_s", _positive,
           "overall seconds allowed for each manifest, signature, API or SHA256SUMS fetch "
           "(default 60)"),
    Option("seed_binary", "seed_binary", Path,
           "agent to install when the state directory holds none"),
    Option("stop_grace", "stop_grace_s", _positive,
           "seconds the agent gets to stop after SIGTERM before SIGKILL (default 10)"),
    Option("download_deadline", "download_deadline_s", _positive,
           "overall seconds allowed for one binary download (default 600)"),
    Option("max_binary_bytes", "max_binary_bytes", _int_bytes,
           "largest binary accepted, in bytes (default 1 GiB)"),
    Option("registry_credentials", "registry_credentials", Path,
           "with an oci:// --manifest-url: Docker config.json whose auths.HOST.auth "
           "(base64 user:password) is used for that registry or mirror"),
    Option("mirror", "mirrors", str,
           "with an oci:// --manifest-url: a registry mirror HOST[:PORT][/PREFIX] asked first, "
           "falling back to the origin; repeatable (TOML: a list; environment: separated "
           "by ',')", many=True, separator=","),
    Option("hold", "hold", _hold,
           "hold every host of this config: no update is applied (checks go on); the "
           "text is the reason shown by status"),
    Option("pin", "pin", _pin, "never update above this version"),
    Option("window", "windows", _window,
           "maintenance window 'DAYS HH:MM-HH:MM ZONE' (e.g. 'Mon-Fri 02:00-04:00 "
           "Europe/Berlin'); swaps happen only inside one; repeatable (TOML: a list; "
           "environment: specs separated by ';')", many=True, separator=";"),
)
OPTIONS += (
    Option("proxy", "proxy", _proxy,
           "http://HOST:PORT proxy for every update request (https through CONNECT), or "
           "'env' to honour HTTPS_PROXY, HTTP_PROXY and NO_PROXY; default: no proxy, the "
           "environment ignored"),
    Option("proxy_credentials", "proxy_credentials", Path,
           "file with one line user:password for the proxy (owned by the launcher's user "
           "or root, mode 0600 or stricter)"),
    Option("disk_margin", "disk_margin_bytes", _int_bytes,
           "bytes that must stay free in the state dir beside the new build before a "
           "download starts (default 16 MiB)"),
    Option("metrics_file", "metrics_file", Path,
           "write Prometheus metrics (text format) to this file after every event, "
           "atomically (node_exporter's textfile collector)"),
    Option("log_format", "log_format", _choice(LOG_FORMATS),
           "text (default) or json: one JSON object per line for the launcher's own lines"),
    Option("listen", "listen", _listen,
           "HOST:PORT, [V6]:PORT or unix:PATH the launcher binds once and hands to every "
           "agent generation (LISTEN_FDS, fd 3 onwards); repeatable (TOML: a list; "
           "environment: separated by spaces)", many=True, separator=" "),
    Option("ready", "ready", _choice(READY_MODES),
           "health (default: the health URL and staying up judge a new build) or notify "
           "(the window starts at the agent's sd_notify READY=1; no READY, or stopped "
           "WATCHDOG=1 pings, fail it)"),
    Option("handover", "handover", _choice(HANDOVERS),
           "stop-first (default: stop the old agent, then start the new) or overlap (start "
           "the new while the old serves; stop the old once the new is READY; needs "
           "--ready notify)"),
    Option("agent_watchdog", "agent_watchdog_s", _non_negative,
           "with --ready notify, the agent's WATCHDOG_USEC in seconds: a trial agent silent "
           "that long after a WATCHDOG=1 fails; 0 turns it off (default 10)"),
)
BOOL_FLAGS = ("allow_http", "github_prerelease", "allow_legacy_signatures", "allow_unsigned")


def _items(raw: Any, separator: str = ":") -> list[str]:
    """A ``many`` option's values: a list (flags, TOML) or separated (environment)."""
    if isinstance(raw, str):
        items = raw.split() if separator == " " else raw.split(separator)
        return [item.strip() for item in items if item.strip()]
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise ValueError(f"{raw!r} is not a list of strings")


def machine_platform() -> str:
    machine = _platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "linux-amd64"
    if machine in ("aarch64", "arm64"):
        return "linux-arm64"
    raise ConfigError(f"unsupported machine {machine!r}: set --platform to one of "
                      f"{', '.join(PLATFORMS)}")


def load(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    agent_args: tuple[str, ...] = (),
) -> Settings:
    """Merge file < environment < flags into Settings; ConfigError says what to fix."""
    env = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    if config_file is not None:
        import tomllib  # only with a config file: the resident stays small without one

        try:
            file_values = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not UTF-8 text: {exc}") from exc
        except ValueError as exc:  # a path the OS cannot take (an embedded NUL)
            raise ConfigError(f"config file {config_file!r}: not a usable path: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        known = {o.key for o in OPTIONS}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown key(s) {', '.join(unknown)}; "
                              f"known keys: {', '.join(sorted(known))}")

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw: Any = None
        source = ""
        if flags.get(opt.key) is not None:
            raw, source = flags[opt.key], f"--{opt.key.replace('_', '-')}"
        elif ENV_PREFIX + opt.key.upper() in env:
            raw, source = env[ENV_PREFIX + opt.key.upper()], ENV_PREFIX + opt.key.upper()
        elif opt.key in file_values:
            raw, source = file_values[opt.key], f"{config_file}: {opt.key}"
        if raw is None:
            continue
        try:
            if opt.many:
                values[opt.field] = tuple(opt.parse(item) for item in _items(raw, opt.separator))
            else:
                if isinstance(raw, bool) and opt.key not in BOOL_FLAGS:
                    raise ValueError(f"{raw!r} is not a valid value here")
                values[opt.field] = raw if isinstance(raw, bool) else opt.parse(str(raw))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    if values.get("manifest_url") and values.get("github_repo"):
        raise ConfigError("--manifest-url and --github-repo are both set: give only one "
                          "update source")
    if values.get("github_repo"):
        # The supervisor polls whenever manifest_url is set: in API mode it is the URL of
        # the release description the worker fetches.
        values["manifest_url"] = github_latest_url(
            values.get("github_api_url", GITHUB_API_URL), values["github_repo"])
    settings = Settings(**values, agent_args=tuple(agent_args))
    if not settings.platform:
        settings = dataclasses.replace(settings, platform=machine_platform())
    validate(settings)
    if settings.proxy == "env":
        _validate_proxy_environment(env)
    return settings


def _validate_proxy_environment(env: Mapping[str, str]) -> None:
    """``--proxy env``: the variables it will honour must name http:// proxies."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        value = env.get(name.lower(), env.get(name, "")).strip()
        if not value:
            continue
        url = value if "://" in value else f"http://{value}"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError as exc:
            raise ConfigError(f"--proxy env: {name} {redact(url)!r} is not a valid URL "
                              "(its port, or '/', '?' or '#' not percent-encoded before the "
                              "host)") from exc
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"--proxy env: {name} {redact(url)!r}: only http:// proxies "
                              "are supported (https origins go through CONNECT)")


def github_latest_url(api_url: str, repo: str) -> str:
    """The API URL of a repository's latest release."""
    return f"{api_url.rstrip('/')}/repos/{repo}/releases/latest"


def validate(s: Settings) -> None:
    if s.handover == "overlap" and s.ready != "notify":
        raise ConfigError("--handover overlap needs --ready notify: during an overlap the "
                          "old and the new agent answer on the same socket, so only the new "
                          "agent's own READY=1 tells that it is ready")
    if s.github_repo is not None:
        _validate_github(s)
    elif s.manifest_url:
        scheme = _scheme(s.manifest_url, "--manifest-url")
        if scheme not in ("https", "http", "file", "oci"):
            raise ConfigError(f"--manifest-url {s.manifest_url!r}: use an https:// URL "
                              "(or file:// for a local directory, oci://HOST/REPOSITORY:TAG for a "
                              "registry)")
        if scheme == "http" and not s.allow_http:
            raise ConfigError(f"--manifest-url {s.manifest_url} is plain http: use https, "
                              "or pass --allow-http for a trusted network")
    _validate_oci(s)
    if s.ca_file is not None and not s.ca_file.is_file():
        raise ConfigError(f"--ca-file {s.ca_file} does not exist")
    if s.seed_binary is not None and not s.seed_binary.is_file():
        raise ConfigError(f"--seed-binary {s.seed_binary} does not exist")
    if s.proxy_credentials is not None:
        from launcher.permissions import check_secret_file

        if s.proxy is None:
            raise ConfigError("--proxy-credentials is set without --proxy")
        check_secret_file(s.proxy_credentials, "--proxy-credentials")
    if s.metrics_file is not None and not s.metrics_file.parent.is_dir():
        raise ConfigError(f"--metrics-file {s.metrics_file}: directory "
                          f"{s.metrics_file.parent} does not exist")
    if s.public_keys:
        from launcher.signature import load_public_key  # standard library only

        for path in s.public_keys:
            load_public_key(path)  # ConfigError naming the file


def require_signatures(s: Settings) -> None:
    """``run`` and ``check`` take releases signed by a configured key, or are told not to.

    A launcher with no update source (supervising a seed only) fetches nothing and needs
    no key; a config reload that adds a source passes through here again.
    """
    if s.public_keys or s.allow_unsigned or not s.manifest_url:
        return
    raise ConfigError("no --public-key given: signatures are required, so the launcher needs "
                      "the release's minisign public key (--public-key FILE, config key "
                      "public_key, NGINX_MANAGER_PUBLIC_KEY); to take unsigned releases "
                      "anyway, pass --allow-unsigned")


def _scheme(url: str, flag: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError as exc:
        raise ConfigError(f"{flag} {url!r} is not a valid URL: {exc}") from exc


def _validate_github(s: Settings) -> None:
    if not _GITHUB_REPO.fullmatch(s.github_repo or ""):
        raise ConfigError(f"--github-repo {s.github_repo!r}: use OWNER/NAME, e.g. "
                          "nginx/nginx-manager-agent")
    if s.manifest_url not in (None, github_latest_url(s.github_api_url, s.github_repo or "")):
        raise ConfigError("--manifest-url and --github-repo are both set: give only one "
                          "update source")
    scheme = _scheme(s.github_api_url, "--github-api-url")
    if scheme not in ("https", "http") or not urlsplit(s.github_api_url).hostname:
        raise ConfigError(f"--github-api-url {s.github_api_url!r}: use an https:// URL")
    if scheme == "http" and not s.allow_http:
        raise ConfigError(f"--github-api-url {s.github_api_url} is plain http: use https, "
                          "or pass --allow-http for a trusted network")


def _validate_oci(s: Settings) -> None:
    oci = (s.manifest_url or "").startswith("oci:")
    if (s.mirrors or s.registry_credentials is not None) and not oci:
        raise ConfigError("--mirror and --registry-credentials need a --manifest-url "
                          "oci://HOST/REPOSITORY:TAG")
    if not oci:
        return
    from launcher.sources.reference import parse_mirror, parse_reference  # standard library

    parse_reference(s.manifest_url or "")
    for mirror in s.mirrors:
        parse_mirror(mirror)
    if s.registry_credentials is not None and not s.registry_credentials.is_file():
        raise ConfigError(f"--registry-credentials {s.registry_credentials} does not exist")
