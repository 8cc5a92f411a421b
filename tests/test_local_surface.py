"""The local surface, attacked as another local user would: the lock, planted modules, the
launcher's secrets, a state dir others can write, symlinks, an offline command as root.

Tests that need a second user run the launcher or the attacker as ``nobody`` (setpriv), in
a directory outside pytest's private temp dir, which ``nobody`` could not reach.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Launcher, run_cli, script_agent, unavailable, wait_until

SLEEP = "exec sleep 100000"
LAUNCHER = str(Path(sys.executable).parent / "nginx-manager-launcher")


@pytest.fixture(scope="module")
def nobody_launcher() -> Iterator[list[str]]:
    """``nginx-manager-launcher`` as another user can run it, wherever this checkout is: this
    venv's interpreter may sit in a directory only root can enter, so the resident's code
    (the launcher and agent packages and psutil, all it imports) is copied into a venv on
    Debian's own python3 under /var/tmp, as an installed launcher would be."""
    import psutil as psutil_pkg

    base = shutil.which("python3", path="/usr/bin")
    if base is None or os.geteuid() != 0:
        unavailable("Debian's /usr/bin/python3 and root are needed to act as another user")
    venv = Path("/var/tmp") / f"nma-nobody-venv-{uuid.uuid4().hex[:8]}"
    subprocess.run([base or "", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    for package in (ROOT / "launcher", ROOT / "agent", Path(psutil_pkg.__file__).parent):
        shutil.copytree(package, site / package.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [str(venv / "bin" / "python"), "-m", "launcher"]
    probe = as_nobody(*cmd, "--help", cwd="/")
    if probe.returncode != 0:
        unavailable(f"another user cannot run the launcher: {probe.stderr}")
    yield cmd
    shutil.rmtree(venv, ignore_errors=True)


def as_nobody(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("setpriv (util-linux) is needed to act as another user")
    return subprocess.run([setpriv or "", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *cmd], capture_output=True, text=True, timeout=60, check=False,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that another user can reach (pytest's temp dirs are root-only)."""
    if os.geteuid() != 0:
        unavailable("acting as two users needs root")
    path = Path("/var/tmp") / f"nma-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_another_user_cannot_hold_the_lock(launcher: Callable[..., Launcher],
                                           shared_dir: Path) -> None:
    """The lock is in run/ (0700): nobody can open it to flock it, so the next start works."""
    state = shared_dir / "state"
    lch = launcher(state).start("--seed-binary",
                                str(script_agent(shared_dir / "a", "1.0.0", SLEEP)),
                                agent_args=())
    lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    lock = state / "run" / "launcher.lock"
    assert lock.exists()
    grab = as_nobody(sys.executable, "-c",
                     f"import fcntl; f = open({str(lock)!r}); fcntl.flock(f, fcntl.LOCK_EX)")
    assert grab.returncode != 0 and "Permission denied" in grab.stderr, grab
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert lch.stop() == 0


def test_helpers_do_not_import_modules_planted_in_the_working_directory(
        launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    """A ``hashlib.py`` in the launcher's working directory never runs: helpers start as
    ``python -I`` from /."""
    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "hijacked"
    for name in ("hashlib", "json", "packaging", "httpx", "watchfiles"):
        (planted / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    state = tmp_path / "state"
    agent = script_agent(tmp_path / "a", "1.0.0", SLEEP)
    log = (tmp_path / "launcher.log").open("wb")
    proc = subprocess.Popen([LAUNCHER, "run", "--state-dir", str(state), "--seed-binary",
                             str(agent)], cwd=planted, stdout=log, stderr=log)
    try:
        lch = Launcher(state, tmp_path / "launcher.log", 0)
        lch.proc = proc  # type: ignore[assignment]
        lch.wait_state(lambda s: (s.get("child") or {}).get("state") == "running")
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    assert not marker.exists(), f"a planted module ran: {marker.read_text()}"


def test_version_runs_get_no_secrets_and_the_agent_cannot_read_the_launcher(
        shared_dir: Path, nobody_launcher: list[str]) -> None:
    """A seed's ``--version`` sees neither the source token nor the launcher's settings; the
    agent, running as the same user, cannot read the launcher's environment from /proc."""
    env_dump, proc_read = shared_dir / "version-env", shared_dir / "proc-read"
    agent = shared_dir / "agent"
    agent.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then env > {env_dump}; echo 1.0.0; exit 0; fi\n'
        f'if cat /proc/$PPID/environ > /dev/null 2>&1; then echo readable > {proc_read}; '
        f"else echo refused > {proc_read}; fi\n{SLEEP}\n")
    agent.chmod(0o755)
    state = shared_dir / "state"
    state.mkdir()
    shutil.chown(state, "nobody", "nogroup")
    shutil.chown(shared_dir, "nobody", "nogroup")
    env = {**os.environ, "GITHUB_TOKEN": "ghp_secret", "NGINX_MANAGER_JITTER": "0",
           "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    setpriv = shutil.which("setpriv") or "setpriv"
    proc = subprocess.Popen([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             *nobody_launcher, "run", "--state-dir", str(state),
                             "--seed-binary",
                             str(agent)], env=env, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(proc_read.exists, 20, "the agent's probe")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc_read.read_text().strip() == "refused", err
    dumped = env_dump.read_text()
    assert "ghp_secret" not in dumped and "NGINX_MANAGER_" not in dumped


def test_a_state_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    agent = script_agent(tmp_path / "a", "1.0.0", SLEEP)
    for target, mode in ((tmp_path / "open", 0o777), (tmp_path / "group", 0o775)):
        target.mkdir()
        target.chmod(mode)
        out = run_cli("run", "--state-dir", str(target), "--seed-binary", str(agent))
        assert out.returncode == 2, out
        assert "writable by others" in out.stderr and "chmod go-w" in out.stderr
    bin_open = tmp_path / "binopen"
    (bin_open / "bin").mkdir(parents=True)
    (bin_open / "bin").chmod(0o777)
    out = run_cli("run", "--state-dir", str(bin_open), "--seed-binary", str(agent))
    assert out.returncode == 2 and "bin/" in out.stderr, out


def test_a_state_dir_of_another_user_is_refused(shared_dir: Path,
                                                nobody_launcher: list[str]) -> None:
    """Run as nobody on a state dir that belongs to another (non-root) user: refused before
    anything is touched."""
    agent = script_agent(shared_dir / "a", "1.0.0", SLEEP)
    other = shared_dir / "other"
    other.mkdir(mode=0o755)
    os.chown(other, pwd.getpwnam("daemon").pw_uid, -1)
    out = as_nobody(*nobody_launcher, "run", "--state-dir", str(other), "--seed-binary",
                    str(agent), cwd="/")
    assert out.returncode == 2 and "belongs to uid" in out.stderr, out
    assert list(other.iterdir()) == []


def test_symlinks_in_the_state_dir_are_not_followed(tmp_path: Path) -> None:
    agent = script_agent(tmp_path / "a", "1.0.0", SLEEP)
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "run" / "launcher.lock").symlink_to(victim)
    out = run_cli("run", "--state-dir", str(state), "--seed-binary", str(agent))
    assert out.returncode == 2 and "symlink" in out.stderr, out
    assert victim.read_text() == "precious\n"
    (state / "run" / "launcher.lock").unlink()
    (state / "state.json").symlink_to(victim)
    out = run_cli("status", "--state-dir", str(state))
    assert out.returncode == 2 and "symlink" in out.stderr, out


def test_an_offline_rollback_as_root_leaves_files_the_service_can_write(
        shared_dir: Path, nobody_launcher: list[str]) -> None:
    """The service runs as nobody; root rolls back while it is stopped; the service's next
    start can still write its journal (no root-owned file left behind)."""
    state = shared_dir / "state"
    state.mkdir(mode=0o700)
    (state / "bin").mkdir(mode=0o755)
    old = script_agent(state / "bin" / "agent.old", "1.0.0", SLEEP)
    new = script_agent(state / "bin" / "agent", "1.0.1", SLEEP)
    for p in (shared_dir, state, state / "bin", old, new):
        shutil.chown(p, "nobody", "nogroup")
    # Let the service make its journal once, as itself.
    setpriv = shutil.which("setpriv") or "setpriv"
    service = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               *nobody_launcher, "run", "--state-dir", str(state)]
    proc = subprocess.Popen(service, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until((state / "state.json").exists, 20, "the service's journal")
    wait_until(lambda: '"state": "running"' in (state / "state.json").read_text(), 20,
               "the service's agent running")
    proc.terminate()
    proc.communicate(timeout=15)
    out = run_cli("rollback", "--state-dir", str(state))
    assert out.returncode == 0, out
    root_owned = [p for p in state.rglob("*") if p.lstat().st_uid == 0]
    assert root_owned == [], root_owned
    proc = subprocess.Popen(service, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "cannot write" in (state / "state.json").read_text()
                   or '"state": "running"' in (state / "state.json").read_text(), 20,
                   "the service running again")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "cannot write" not in err, err


def test_a_worker_gets_no_settings_variables_nor_the_token() -> None:
    """*unit*: the worker's settings and token come on its stdin; its environment (readable by
    the agent's user while it runs) holds neither, a manifest URL's credentials included.
    (Found by review.)"""
    from launcher import isolated

    env = isolated.worker_environ({"NGINX_MANAGER_MANIFEST_URL": "https://u:s3cret@h/v.json",
                                   "GITHUB_TOKEN": "t", "PATH": "/bin",
                                   "NGINX_MANAGER_FAULT_POINT": "staged"})
    assert env == {"PATH": "/bin", "NGINX_MANAGER_FAULT_POINT": "staged"}
