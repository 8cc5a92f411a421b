"""``--metrics-file``: Prometheus' text format, checked by the real ``promtool``, with values that
follow a real launcher through an update, a rollback, a failed check and a restart; and the
example alerting rules, checked and unit-tested by ``promtool`` too."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Launcher, run_cli, script_agent, unavailable, wait_until
from hostile import manifest_for, quick_args, sleeper, start, wait_committed
from release_server import ReleaseServer, Route

from launcher import metrics
from launcher.journal import BadBuild, Build, ChildInfo, Trial, new_state
from launcher.settings import Settings

ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def assert_valid(text: str) -> None:
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0, f"promtool: {r.stdout}{r.stderr}\n{text}"


def values(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return {(name, tuple(sorted(labels.items()))): v
            for name, labels, v in metrics.samples(text)}


def value(path: Path, name: str, **labels: str) -> float | None:
    return values(path).get((metrics.PREFIX + name, tuple(sorted(labels.items()))))


def test_the_file_passes_promtool_in_every_phase() -> None:
    """Empty, on trial with hostile label values, committed with counters: all valid."""
    s = Settings()
    empty = new_state()
    assert_valid(metrics.render(empty, s, 1.7e9))
    odd = Build('1.0"\\\nx', "ab" * 32)
    trial = dataclasses.replace(
        empty, phase="trial", current=odd, trial=Trial(odd, "2026-01-01T00:00:00Z", 30.0),
        child=ChildInfo(1, "1.0", "running", "x"),
        bad=(BadBuild("0.9", "cd" * 32, "agent exited with code 3", "x"),),
        extra={"hold": {"reason": "change freeze", "since": "x"}, "pin": "1.4"})
    trial = metrics.count_check(trial, {"outcome": "error", "error_kind": "host"}, 1.7e9)
    trial = metrics.count_check(trial, {"outcome": "error", "error": "odd kind! here"}, 1.7e9)
    text = metrics.render(trial, s, 1.7e9)
    assert_valid(text)
    assert 'nginx_manager_trial_progress_ratio 0.5' in text
    assert 'nginx_manager_hold 1' in text and 'nginx_manager_pin{version="1.4"} 1' in text
    assert 'nginx_manager_check_errors_total{kind="other"} 1' in text
    assert 'nginx_manager_check_errors_total{kind="host"} 1' in text
    committed = metrics.counted(trial, dataclasses.replace(trial, phase="committed",
                                                           trial=None))
    text = metrics.render(committed, s, 1.7e9)
    assert_valid(text)
    assert "nginx_manager_updates_total 1" in text
    assert "nginx_manager_phase{phase=\"committed\"} 1" in text
    assert "nginx_manager_hold 0" not in text


def test_counting_transitions() -> None:
    """A commit after a trial is one update; each build newly marked bad is one rollback by
    reason class; a failed build kept (nothing to go back to) is no update."""
    b1, b2 = Build("1", "a" * 64), Build("2", "b" * 64)
    trial = dataclasses.replace(new_state(), phase="trial", current=b2, previous=b1)
    done = metrics.counted(trial, dataclasses.replace(trial, phase="committed"))
    assert metrics.counters(done)["updates"] == 1
    assert metrics.counters(metrics.counted(done, done))["updates"] == 1
    failed = trial.with_bad(b2, "agent stopped answering http://x/healthz", "t")
    kept = metrics.counted(trial, dataclasses.replace(failed, phase="committed"))
    c = metrics.counters(kept)
    assert c["updates"] == 0 and c["rollbacks"] == {"unhealthy": 1}
    again = metrics.counted(kept, kept.with_bad(b1, "rolled back by the operator", "t"))
    assert metrics.counters(again)["rollbacks"] == {"unhealthy": 1, "operator": 1}


def test_values_follow_a_real_launcher(tmp_path: Path,
                                       launcher: Callable[..., Launcher]) -> None:
    """An update, an operator's rollback with the launcher stopped, a restart, an update
    that crashes and is rolled back, a failed check: the file stays valid throughout and
    the counters survive the restart."""
    prom = tmp_path / "textfile" / "nginx_manager.prom"
    prom.parent.mkdir()
    seed, good = sleeper(tmp_path, "0.1.0"), sleeper(tmp_path, "0.2.0")
    crashing = script_agent(tmp_path / "agent-0.3.0", "0.3.0", "exit 3")
    with ReleaseServer() as srv:
        srv.publish("/bin/0.2.0", Route(body=good.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/0.2.0"),
                                                             good)))
        lch = launcher()
        args = quick_args(srv.url("/version.json"), seed, **{"--metrics-file": str(prom)})
        start(lch, args, "0.1.0")
        wait_committed(lch, "0.2.0")
        wait_until(lambda: value(prom, "updates_total") == 1, 15, "updates_total 1")
        assert value(prom, "agent_info", version="0.2.0", sha256=sha(good)) == 1
        assert value(prom, "rollbacks_total", reason="exited") == 0
        assert (value(prom, "last_successful_check_timestamp_seconds") or 0) > 1.7e9
        assert_valid(prom.read_text())
        assert lch.stop() == 0
        status = json.loads(run_cli("status", "--json", "--state-dir",
                                    str(lch.state_dir)).stdout)
        assert (status["metrics_file"], status["log_format"], status["proxy"]) == (
            str(prom), "text", None)

        assert run_cli("rollback", "--state-dir", str(lch.state_dir)).returncode == 0
        srv.publish("/bin/0.3.0", Route(body=crashing.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.3.0", srv.url("/bin/0.3.0"),
                                                             crashing)))
        left = prom.with_name(f".{prom.name}.0123abcd.tmp")  # as a kill inside a write leaves
        left.write_text("half a fi")
        lch.start(*args, agent_args=())
        wait_until(lambda: value(prom, "rollbacks_total", reason="exited") == 1, 20,
                   "the crashing update rolled back and counted")
        assert value(prom, "rollbacks_total", reason="operator") == 1  # counted offline
        assert value(prom, "updates_total") == 1  # kept across the restart
        assert value(prom, "bad_builds") == 2
        wait_until(lambda: value(prom, "agent_info", version="0.1.0", sha256=sha(seed)) == 1
                   and value(prom, "agent_up") == 1, 15, "0.1.0 running again")
        assert_valid(prom.read_text())

        checks = value(prom, "checks_total") or 0
        srv.publish("/version.json", Route(status=500))
        wait_until(lambda: (value(prom, "check_errors_total", kind="transport") or 0) >= 1, 15,
                   "a failed check counted")
        assert (value(prom, "checks_total") or 0) > checks
        assert (value(prom, "consecutive_check_failures") or 0) >= 1
        assert_valid(prom.read_text())
        assert lch.stop() == 0
    assert not list(prom.parent.glob(".*.tmp"))  # the planted one removed at start too


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unwritable_metrics_file_stops_nothing(tmp_path: Path,
                                                  launcher: Callable[..., Launcher]) -> None:
    """The metrics directory disappears: one warning, the agent keeps running, updates go on."""
    prom_dir = tmp_path / "textfile"
    prom_dir.mkdir()
    new = sleeper(tmp_path, "0.2.0")
    with ReleaseServer() as srv:
        srv.publish("/version.json", Route(status=404))
        lch = launcher()
        start(lch, quick_args(srv.url("/version.json"), sleeper(tmp_path, "0.1.0"),
                              **{"--metrics-file": str(prom_dir / "m.prom")}), "0.1.0")
        wait_until((prom_dir / "m.prom").exists, 10, "the metrics file")
        prom_dir.rename(tmp_path / "gone")  # atomic: the launcher may be writing in it
        srv.publish("/bin/agent", Route(body=new.read_bytes()))
        srv.publish("/version.json", Route(body=manifest_for("0.2.0", srv.url("/bin/agent"),
                                                             new)))
        wait_committed(lch, "0.2.0")
        assert lch.log().count("cannot write the metrics file") == 1
        assert lch.stop() == 0


def test_a_missing_metrics_directory_is_refused_at_start(tmp_path: Path) -> None:
    r = run_cli("check", "--manifest-url", "https://127.0.0.1:1/version.json",
                "--allow-unsigned", "--state-dir", str(tmp_path),
                "--metrics-file", str(tmp_path / "nope" / "m.prom"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_the_example_alerts_pass_promtool() -> None:
    """``promtool check rules`` accepts the README's example rules, and ``promtool test rules``
    fires them on the series they are written for (and not otherwise)."""
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", str(ALERTS.with_name("alerts_test.yml")))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("reason,label", [
    ("rolled back by the operator", "operator"),
    ("agent never answered http://127.0.0.1:8091/healthz during its 60s health window",
     "unhealthy"),
    ("agent exited with code 3 after 0.1s of its 60s health window", "exited"),
    ("agent killed by SIGKILL after 2.0s of its 60s health window", "exited"),
    ("container restarted 4 times during the trial", "container_restarts"),
    ("something new", "other"),
])
def test_reason_labels(reason: str, label: str) -> None:
    assert metrics.reason_label(reason) == label
