"""Operator controls through real launchers and a real update server: hold and resume, pin
and unpin (with a running launcher and without), ``install VERSION`` (a signed downgrade),
the fleet-wide config keys, and the arguments refused."""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import release_tool
from conftest import Launcher, UpdateServer, fast_args, run_cli
from signing import Key, make_key


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def publish(server: UpdateServer, version: str, build: Callable[[str], Path], key: Key,
            **kw: Any) -> dict[str, Any]:
    return release_tool.publish(version, server.dir, server.base_url, binary=build(version),
                                sign_key=key.secret, **kw)


def status(state_dir: Path) -> dict[str, Any]:
    out = run_cli("status", "--json", "--state-dir", str(state_dir))
    assert out.returncode == 0, out
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def ctl(lch: Launcher, *args: str) -> Any:
    return run_cli(*args, "--state-dir", str(lch.state_dir))


def start(lch: Launcher, server: UpdateServer, key: Key, seed: Path, *extra: str) -> Launcher:
    lch.start(*fast_args(server, lch, key.public), "--seed-binary", str(seed), *extra)
    return lch


def test_hold_and_resume_on_a_live_launcher(server: UpdateServer, key: Key,
                                            launcher: Callable[..., Launcher],
                                            build: Callable[[str], Path]) -> None:
    """A held host keeps checking and says what is available; it updates once resumed."""
    publish(server, "0.1.0", build, key)
    lch = start(launcher(), server, key, build("0.1.0"))
    lch.wait_healthy("0.1.0")
    out = ctl(lch, "hold", "--reason", "incident 42")
    assert out.returncode == 0 and "held" in out.stdout, out
    publish(server, "0.1.1", build, key)
    lch.wait_state(lambda s: s.get("extra", {}).get("available") == "0.1.1",
                   what="the held host reports 0.1.1 as available")
    assert lch.health()["version"] == "0.1.0"  # type: ignore[index]
    st = status(lch.state_dir)
    assert st["hold"]["reason"] == "incident 42" and st["hold"]["since"]
    assert st["hold"]["by"] == pwd.getpwuid(os.geteuid()).pw_name  # the kernel agrees
    assert st["available"] == "0.1.1" and st["current_version"] == "0.1.0"
    assert "hold:        since" in ctl(lch, "status").stdout
    out = ctl(lch, "resume")
    assert out.returncode == 0 and "resumed" in out.stdout, out
    lch.wait_healthy("0.1.1")
    assert status(lch.state_dir)["hold"] is None
    assert lch.stop() == 0


def test_pin_and_hold_offline_then_unpin_and_resume_live(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Recorded in the journal under the lock before the first start; a running launcher
    honours both and lifts each when asked."""
    publish(server, "0.1.1", build, key)
    lch = launcher()
    lch.state_dir.mkdir(mode=0o700)
    out = ctl(lch, "pin", "0.1.0")
    assert out.returncode == 0 and "no launcher is running" in out.stdout, out
    start(lch, server, key, build("0.1.0"))
    lch.wait_log(r"0\.1\.1 is above the pin 0\.1\.0")
    assert status(lch.state_dir)["pin"] == "0.1.0"
    assert lch.stop() == 0
    assert ctl(lch, "hold").returncode == 0
    start(lch, server, key, build("0.1.0"))
    lch.wait_healthy("0.1.0")
    assert ctl(lch, "unpin").returncode == 0
    lch.wait_state(lambda s: s.get("extra", {}).get("available") == "0.1.1",
                   what="still held: 0.1.1 only available")
    st = status(lch.state_dir)
    assert st["pin"] is None and st["hold"]["reason"] is None
    assert ctl(lch, "resume").returncode == 0
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0


def test_install_is_a_signed_downgrade_that_pins_the_host(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """``install 0.1.0`` from 0.1.1: the release's own manifest (an older serial) is taken
    on this path only; the serial floor stays; the host stays pinned at 0.1.0; a bad mark
    on the version needs ``unblock`` first."""
    old = publish(server, "0.1.0", build, key)
    new = publish(server, "0.1.1", build, key)
    assert old["serial"] < new["serial"]
    lch = start(launcher(), server, key, build("0.1.0"))
    lch.wait_state(lambda s: s.get("phase") == "committed" and s["current"]["version"] == "0.1.1",
                   what="0.1.1 committed")
    floors = lch.state()["extra"]["trust"]["serials"]
    asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    out = ctl(lch, "install", "0.1.0")
    assert out.returncode == 0 and "pinned at 0.1.0" in out.stdout, out
    st = lch.wait_state(lambda s: (s.get("extra", {}).get("install") or {}).get("state")
                        == "done", timeout=30, what="the install done")
    lch.wait_healthy("0.1.0")
    request = st["extra"]["install"]
    assert request["version"] == "0.1.0" and request["by"] and request["at"] >= asked
    assert st["extra"]["trust"]["serials"] == floors  # neither lowered nor raised
    assert st["previous"]["version"] == "0.1.1"
    lch.wait_log(r"0\.1\.1 is above the pin 0\.1\.0")  # the next poll does not undo it
    assert status(lch.state_dir)["pin"] == "0.1.0"
    assert "Install requested: 0.1.0" in lch.log()
    assert ctl(lch, "rollback").returncode == 0  # back to 0.1.1; 0.1.0 is marked bad
    lch.wait_healthy("0.1.1")
    out = ctl(lch, "install", "0.1.0")
    assert out.returncode == 1 and "unblock 0.1.0" in out.stderr, out
    assert lch.stop() == 0


def test_install_recorded_offline_happens_at_the_next_start(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    publish(server, "0.1.0", build, key)
    publish(server, "0.1.1", build, key)
    lch = start(launcher(), server, key, build("0.1.1"))
    lch.wait_healthy("0.1.1")
    assert lch.stop() == 0
    out = ctl(lch, "install", "0.1.0")
    assert out.returncode == 0 and "recorded" in out.stdout, out
    assert status(lch.state_dir)["install"]["state"] == "pending"
    start(lch, server, key, build("0.1.1"), "--poll-interval", "600")  # not the poll: at once
    lch.wait_healthy("0.1.0", timeout=30)
    lch.wait_state(lambda s: s["extra"]["install"]["state"] == "done", what="install done")
    assert lch.stop() == 0


def test_the_config_file_holds_and_pins_the_fleet(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path], tmp_path: Path) -> None:
    """``hold`` and ``pin`` in the TOML config: status shows them, ``resume`` cannot lift
    a hold the config file sets, and ``install`` is refused while held."""
    publish(server, "0.1.1", build, key)
    config = tmp_path / "launcher.toml"
    config.write_text('hold = "fleet freeze"\npin = "0.1.0"\n'
                      'window = ["Sat,Sun 01:00-03:00 Europe/Berlin"]\n')
    lch = start(launcher(), server, key, build("0.1.0"), "--config", str(config))
    lch.wait_log(r"0\.1\.1 is above the pin 0\.1\.0")
    st = status(lch.state_dir)
    assert st["hold"]["reason"] == "fleet freeze" and st["hold"]["by"] == "config"
    assert st["pin"] == "0.1.0" and st["channel"] == "stable"
    assert st["window"] == ["Sat,Sun 01:00-03:00 Europe/Berlin"] and st["next_window"]
    out = ctl(lch, "resume")
    assert out.returncode == 1 and "config file" in out.stderr, out
    out = ctl(lch, "install", "0.1.1")
    assert out.returncode == 1 and "held" in out.stderr, out
    assert lch.stop() == 0


@pytest.mark.parametrize("args", [("pin", "not-a-version"), ("install", "../0.1.0"),
                                  ("install", "1.0/x"), ("hold", "--reason", "two\nlines")])
def test_bad_arguments_exit_2_and_record_nothing(args: tuple[str, ...], tmp_path: Path) -> None:
    out = run_cli(*args, "--state-dir", str(tmp_path))
    assert out.returncode == 2, out
    assert not (tmp_path / "state.json").exists()


def test_an_install_that_keeps_failing_is_settled_and_checks_go_on(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Review: a failed install carried no name in the worker's error, so it was never
    counted or settled and every later check was the install again. An unpublished version
    is tried five times in all, then marked failed; the host's checks then go back to the
    main manifest (and the pin, which the operator set by asking, stays until `unpin`)."""
    publish(server, "0.1.0", build, key)
    lch = start(launcher(), server, key, build("0.1.0"))
    lch.wait_healthy("0.1.0")
    assert ctl(lch, "install", "0.0.9").returncode == 0
    st = lch.wait_state(lambda s: (s.get("extra", {}).get("install") or {}).get("state")
                        == "failed", timeout=40, what="the install settled as failed")
    assert "404" in st["extra"]["install"]["error"]
    lch.wait_log("install of 0.0.9 refused")
    assert lch.wait_log(r"trying again at the next check \(4 of 5\)")
    publish(server, "0.1.1", build, key)
    lch.wait_log(r"0\.1\.1 is above the pin 0\.0\.9")  # the main manifest is read again
    assert ctl(lch, "unpin").returncode == 0
    lch.wait_healthy("0.1.1", timeout=30)
    assert lch.stop() == 0


def test_an_expired_release_manifest_can_still_be_installed_by_name(
        server: UpdateServer, key: Key, launcher: Callable[..., Launcher],
        build: Callable[[str], Path]) -> None:
    """Every release's versioned manifest expires (30 days by default): `install` names a
    release, it makes no claim about what is current, so its expiry does not stop it."""
    publish(server, "0.1.0", build, key, expires_in_days=1 / 86400)  # expires in 1 s
    publish(server, "0.1.1", build, key)
    lch = start(launcher(), server, key, build("0.1.1"))
    lch.wait_healthy("0.1.1")
    time.sleep(1.5)  # past 0.1.0's expiry
    assert ctl(lch, "install", "0.1.0").returncode == 0
    lch.wait_healthy("0.1.0", timeout=30)
    assert "installing it anyway, as the operator named it" in lch.log()
    assert lch.stop() == 0


def test_pins_and_names_that_are_not_versions_or_forge_lines_are_refused() -> None:
    from launcher import controls, layout, policy

    assert not layout.is_version("1.4.x") and layout.is_version("3.46.3+bea5943")
    assert controls.who_asked({"by": "me\n2026 launcher INFO forged\x1b[31m"}) == \
        "me?2026 launcher INFO forged?[31m"
    decision = policy.decide(candidate="3.46.3+bea5943", current="3.46.2", bad=[],
                             candidate_sha256="a" * 64, cohort=1.0, rollout_percent=None,
                             pins=["3.46.3"])
    assert decision.action == "update", decision
