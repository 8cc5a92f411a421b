"""Deploy files: Kubernetes manifests, the Dockerfile, the example config, their timing budgets."""

from __future__ import annotations

import configparser
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import unavailable

from launcher import settings as launcher_settings
from launcher.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "packaging" / "k8s").glob("*.yaml"))
DOCKERFILE = ROOT / "packaging" / "Dockerfile"
UNIT = ROOT / "systemd" / "nginx-manager-agent.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "launcher.toml.example"
STATE_DIR = "/var/lib/nginx-manager"
SEED = "/opt/nginx-manager-agent/agent"
# Time for the launcher to start (seeding included) and a freshly started agent to answer.
START_MARGIN_S = 20.0
# The launcher fails a trial after 3 consecutive failed probes, ticking at most every 2 s,
# each probe bounded by its own timeout: 15 s covers it (launcher/supervisor.py).
UNHEALTHY_DETECTION_S = 15.0


def need(module: str) -> ModuleType:
    """Import a test tool; missing fails under CI=true and skips elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is missing: install the project's `test` extra")
        raise


def documents(path: Path) -> list[dict[str, Any]]:
    yaml = need("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(path: Path) -> dict[str, Any]:
    (doc,) = documents(path)
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def agent_container(path: Path) -> dict[str, Any]:
    (container,) = pod_spec(path)["containers"]
    assert isinstance(container, dict)
    return container


def probe_budget_s(probe: dict[str, Any]) -> float:
    """Shortest outage after which the kubelet acts on a probe: the outage can begin just
    before a probe, so it takes failureThreshold failures, (failureThreshold - 1) periods."""
    return float(probe.get("periodSeconds", 10)) * (int(probe.get("failureThreshold", 3)) - 1)


def validate_strict(doc: dict[str, Any]) -> str:
    """Validate offline against the newest Kubernetes schemas shipped, unknown fields refused."""
    kv = need("kubernetes_validate")
    return str(kv.validate(doc, kv.latest_version(), strict=True))


def test_there_are_two_manifests() -> None:
    assert [p.name for p in MANIFESTS] == ["daemonset.yaml", "deployment.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    """Each manifest is a valid apps/v1 object with no unknown field."""
    for doc in documents(path):
        assert validate_strict(doc)


def test_strict_validation_catches_a_typo() -> None:
    """Negative control: one misspelt field fails strict validation (and only strict)."""
    kv = need("kubernetes_validate")
    (doc,) = documents(ROOT / "packaging" / "k8s" / "deployment.yaml")
    context = doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    assert kv.validate(doc, kv.latest_version(), strict=False)
    with pytest.raises(kv.ValidationError, match="readOnlyRootFileSystem"):
        validate_strict(doc)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_runs_the_image_as_designed(path: Path) -> None:
    """State on an emptyDir, the launcher's environment, probes on /healthz, locked down."""
    spec = pod_spec(path)
    container = agent_container(path)
    assert spec.get("restartPolicy", "Always") == "Always"
    assert spec.get("hostNetwork", False) is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[STATE_DIR]]["emptyDir"] == {"sizeLimit": "512Mi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NGINX_MANAGER_HEALTH_URL"] == "http://127.0.0.1:8091/healthz"
    assert env["NGINX_MANAGER_MANIFEST_URL"].startswith("https://")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in (8091, "health")
    assert {"name": "health", "containerPort": 8091, "protocol": "TCP"} in container["ports"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert ":latest" not in container["image"] and re.search(r":\d+\.\d+\.\d+", container["image"])
    assert container["resources"] == {"requests": {"cpu": "10m", "memory": "48Mi"},
                                      "limits": {"cpu": "200m", "memory": "128Mi"}}


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_three_binaries_fit_the_state_volume(path: Path) -> None:
    """agent, agent.old and a download in flight: the binary cap is below a third of the
    emptyDir's sizeLimit, so the volume never fills mid-update."""
    spec = pod_spec(path)
    container = agent_container(path)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    size = quantity_bytes(volumes[mounts[STATE_DIR]]["emptyDir"]["sizeLimit"])
    env = {e["name"]: e["value"] for e in container["env"]}
    del env["NGINX_MANAGER_PUBLIC_KEY"]  # the pod's mounted key: not on this host
    cap = launcher_settings.load({}, environ=env).max_binary_bytes
    assert cap < Settings().max_binary_bytes  # the manifest lowers the default
    assert 3 * cap < size


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_pod_runs_signed_with_the_key_from_a_configmap(path: Path) -> None:
    """Signatures are required: the launcher's public key is a read-only mount of the
    ConfigMap the operator creates, and nothing says --allow-unsigned."""
    spec = pod_spec(path)
    container = agent_container(path)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "NGINX_MANAGER_ALLOW_UNSIGNED" not in env
    key = Path(env["NGINX_MANAGER_PUBLIC_KEY"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(key.parent)]
    assert mount.get("readOnly") is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == "nginx-manager-release-key"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_timing_budgets_fit(path: Path) -> None:
    """The launcher's defaults fit inside systemd's and the kubelet's patience.

    - Stopping: the launcher gives the agent ``stop_grace`` after SIGTERM, then SIGKILL, and
      then exits; systemd (``TimeoutStopSec``) and the kubelet
      (``terminationGracePeriodSeconds``, no preStop hook here) must wait longer, with margin,
      or they SIGKILL the launcher in the middle of a graceful stop.
    - A trial after a swap always begins at a container start (exit 100), so it runs under
      the startup probe, which gates liveness: a build that never answers is rolled back at
      the end of the health window, then the launcher stops it (up to ``stop_grace``) and
      starts the previous agent, which must answer before the startup probe gives up:
      ``startup budget >= health_window + stop_grace + start margin``.
    - Once the startup probe has passed, an agent that stops answering is replaced in place
      (crash restart, or rollback after the launcher's consecutive failed probes); that must
      finish before liveness restarts the container:
      ``liveness budget >= detection + stop_grace + start margin``.
    - Together: ``health_window + stop_grace`` fits inside startup plus liveness budgets.

    A budget is ``periodSeconds x (failureThreshold - 1)``: the least time the kubelet waits.
    """
    s = Settings()
    timeout_stop = float(configparser_service()["TimeoutStopSec"])
    grace = float(pod_spec(path)["terminationGracePeriodSeconds"])
    assert s.stop_grace_s + 10 <= timeout_stop
    assert s.stop_grace_s + 10 <= grace

    container = agent_container(path)
    startup = probe_budget_s(container["startupProbe"])
    liveness = probe_budget_s(container["livenessProbe"])
    assert startup >= s.health_window_s + s.stop_grace_s + START_MARGIN_S
    assert liveness >= UNHEALTHY_DETECTION_S + s.stop_grace_s + START_MARGIN_S
    assert s.health_window_s + s.stop_grace_s <= startup + liveness


def configparser_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        lines.append((instruction.upper(), args.strip()))
        pending = ""
    return lines


def instruction(name: str) -> list[str]:
    return [args for inst, args in dockerfile() if inst == name]


def test_dockerfile_runs_the_launcher_as_pid1() -> None:
    """Exec-form ENTRYPOINT (the launcher is PID 1), agent args after `--` in CMD."""
    (entrypoint,) = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["nginx-manager-launcher", "run"]
    (cmd,) = instruction("CMD")
    assert json.loads(cmd) == ["--", "run", "--health-addr", "0.0.0.0:8091"]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert instruction("EXPOSE") == ["8091"]
    (base,) = instruction("FROM")
    assert base == "${BASE_IMAGE}"
    (default,) = [a for a in instruction("ARG") if a.startswith("BASE_IMAGE=")]
    assert default == "BASE_IMAGE=python:3.11.2-slim-bookworm"  # a public default, pinned


def test_dockerfile_state_seed_and_user() -> None:
    """A non-root user, the state volume, and the seed agent built where the env points."""
    users = instruction("USER")
    assert users, "no USER: the launcher would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    assert instruction("VOLUME") == [STATE_DIR]
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for part in shlex.split(args):
            key, _, value = part.partition("=")
            env[key] = value
    assert env["NGINX_MANAGER_STATE_DIR"] == STATE_DIR
    assert env["NGINX_MANAGER_SEED_BINARY"] == SEED
    assert env["NGINX_MANAGER_MODE"] == "container"
    runs = " ".join(instruction("RUN"))
    assert re.search(r"build_agent\.py \"\$AGENT_VERSION\" --output " + re.escape(SEED), runs)
    assert re.search(r"pip install --no-cache-dir --no-index\s+--find-links \S+\s+"
                     r"--require-hashes\s+-r /src/packaging/requirements.lock", runs), runs
    assert re.search(r"(chown|install -d -o) 10001", runs)
    assert "AGENT_VERSION=0.1.0" in instruction("ARG")


def test_packaging_folder_is_not_a_package() -> None:
    """packaging/ never shadows the `packaging` library, here or from the repository root."""
    assert not (ROOT / "packaging" / "__init__.py").exists()
    import packaging

    assert packaging.__file__ is not None
    location = Path(packaging.__file__).resolve()
    assert "site-packages" in location.parts
    assert ROOT / "packaging" not in location.parents
    # `python -c` from the repository root puts the root first on sys.path: the worst case.
    out = subprocess.run([sys.executable, "-c", "import packaging; print(packaging.__file__)"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert "site-packages" in Path(out.stdout.strip()).parts


def test_dockerignore_keeps_the_local_environment_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "release", "**/__pycache__"} <= set(ignored)


def test_example_config_loads() -> None:
    """systemd/launcher.toml.example is valid as shipped, every key a real option."""
    loaded = launcher_settings.load({}, environ={}, config_file=EXAMPLE_CONFIG)
    assert loaded.manifest_url == "https://updates.example.com/version.json"
    assert loaded.health_url == "http://127.0.0.1:8091/healthz"
    assert loaded.stop_grace_s == Settings().stop_grace_s
    assert loaded.health_window_s == Settings().health_window_s


def test_example_config_mentions_every_option() -> None:
    """Every option appears in the example, set or commented, so operators can find it."""
    text = EXAMPLE_CONFIG.read_text()
    keys = set(re.findall(r"^#? ?(\w+) = ", text, re.M))
    assert keys == {o.key for o in launcher_settings.OPTIONS}
