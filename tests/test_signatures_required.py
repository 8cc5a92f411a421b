"""Secure by default: without a public key, ``run`` and ``check`` refuse to start (exit 2)
unless told ``--allow-unsigned`` (config ``allow_unsigned``, ``NGINX_MANAGER_ALLOW_UNSIGNED``),
and ``status --json`` says which mode the launcher enforces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Launcher, UpdateServer, fast_args, script_agent
from signing import make_key

from launcher import worker
from launcher.settings import Settings


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NGINX_MANAGER_")}
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False,
                          env={**clean, **(env or {})})


@pytest.mark.parametrize("command", ["run", "check"])
def test_no_key_is_exit_2_naming_signatures(command: str, server: UpdateServer,
                                            tmp_path: Path) -> None:
    """The default refuses unsigned operation before anything is fetched or started."""
    out = cli(command, "--manifest-url", server.manifest_url, "--allow-http",
              "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2, out
    assert "signatures are required" in out.stderr
    assert "--public-key" in out.stderr and "--allow-unsigned" in out.stderr
    assert not (tmp_path / "s").exists(), "nothing may be set up for a refused start"


@pytest.mark.parametrize("how", ["flag", "environment", "config file"])
def test_allow_unsigned_is_the_explicit_opt_out(how: str, server: UpdateServer,
                                                tmp_path: Path) -> None:
    server.publish("0.1.1", script_agent(tmp_path / "agent", "0.1.1", "exec sleep 100"))
    args = ["check", "--manifest-url", server.manifest_url, "--allow-http",
            "--state-dir", str(tmp_path / "s")]
    env = {}
    if how == "flag":
        args.append("--allow-unsigned")
    elif how == "environment":
        env["NGINX_MANAGER_ALLOW_UNSIGNED"] = "1"
    else:
        config = tmp_path / "launcher.toml"
        config.write_text("allow_unsigned = true\n")
        args += ["--config", str(config)]
    out = cli(*args, env=env)
    assert out.returncode == 0, out
    assert "would install 0.1.1" in out.stdout


def test_a_key_needs_no_opt_out(server: UpdateServer, tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "release")
    agent = script_agent(tmp_path / "agent", "0.1.1", "exec sleep 100")
    import release_tool

    release_tool.publish("0.1.1", server.dir, server.base_url, binary=agent,
                         sign_key=key.secret)
    out = cli("check", "--manifest-url", server.manifest_url, "--allow-http",
              "--public-key", str(key.public), "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 0 and "would install 0.1.1" in out.stdout, out


def test_the_worker_refuses_unsigned_work_it_was_not_allowed(tmp_path: Path) -> None:
    """Defence in depth: a request without keys and without allow_unsigned fetches nothing."""
    s = Settings(manifest_url="https://127.0.0.1:9/version.json", platform="linux-amd64",
                 state_dir=tmp_path).for_worker()
    result = worker.run_check({"settings": s, "current": None, "bad": [], "host_id": "h",
                               "stage": False})
    assert result.outcome == "error" and result.error_kind == "signature"
    assert result.error is not None and "signatures are required" in result.error
    assert result.signatures == "required"


@pytest.mark.parametrize("signed", [True, False])
def test_status_says_whether_signatures_are_required(
        signed: bool, server: UpdateServer, launcher: Callable[..., Launcher],
        tmp_path: Path) -> None:
    """The resident journals the mode it runs in; status reads it without any settings."""
    keys = (make_key(tmp_path / "keys", "release").public,) if signed else ()
    lch = launcher()
    seed = script_agent(tmp_path / "seed", "0.1.0", "exec sleep 100000")
    lch.start(*fast_args(server, lch, *keys, **{"--health-url": ""}), "--seed-binary",
              str(seed), agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running", what="agent up")
    out = cli("status", "--json", "--state-dir", str(lch.state_dir))
    assert json.loads(out.stdout)["signatures"] == ("required" if signed else "off")
    text = cli("status", "--state-dir", str(lch.state_dir)).stdout
    assert f"signatures:  {'required' if signed else 'off'}" in text
    assert lch.stop() == 0
