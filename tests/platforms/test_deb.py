"""The Debian package: built by Debian's tools, clean under lintian, reproducible, and an
arm64 build made on amd64 that carries arm64 code."""

from __future__ import annotations

import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from platforms.conftest import build_deb, need_tool

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
VENV_SITE = "./opt/nginx-manager-agent/venv/lib/python3.11/site-packages"
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], check=True,
                          capture_output=True, text=True).stdout.strip()


def data_members(deb: Path, scratch: Path) -> tarfile.TarFile:
    with (scratch / "data.tar").open("wb") as out:
        subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, stdout=out)
    return tarfile.open(scratch / "data.tar")


def test_package_is_named_and_laid_out_as_documented(deb: Path, tmp_path: Path) -> None:
    """dist/nginx-manager-agent_<version>_<arch>.deb: the venv, the unit, the conffile."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert deb.name == f"nginx-manager-agent_{VERSION}_{arch}.deb"
    assert field(deb, "Version") == VERSION
    assert "python3 (>= 3.11~)" in field(deb, "Depends")
    with data_members(deb, tmp_path) as tar:
        names = set(tar.getnames())
        venv_cfg = tar.extractfile("./opt/nginx-manager-agent/venv/pyvenv.cfg")
        assert venv_cfg is not None
        assert b"home = /usr/bin\n" in venv_cfg.read()
        python = tar.getmember("./opt/nginx-manager-agent/venv/bin/python3")
        assert python.issym() and python.linkname == "/usr/bin/python3"
        conf = tar.extractfile("./etc/nginx-manager/launcher.toml")
        assert conf is not None
        assert 'seed_binary = "/opt/nginx-manager-agent/agent"\n' in conf.read().decode()
        owners = {(m.uname, m.gname, m.uid, m.gid) for m in tar.getmembers()}
        assert owners == {("root", "root", 0, 0)}
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for path in ("./lib/systemd/system/nginx-manager-agent.service",
                 "./lib/systemd/system/nginx-manager-agent.socket",
                 "./etc/nginx-manager/launcher.toml", "./usr/bin/nginx-manager-launcher",
                 "./opt/nginx-manager-agent/agent", f"{VENV_SITE}/launcher/cli.py",
                 f"{VENV_SITE}/httpx/__init__.py", "./usr/share/doc/nginx-manager-agent/copyright"):
        assert path in names
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True,
                               capture_output=True).stdout
    (tmp_path / "control.tar").write_bytes(conffiles)
    with tarfile.open(tmp_path / "control.tar") as ctrl:
        member = ctrl.extractfile("./conffiles")
        assert member is not None
        assert member.read().decode().split() == ["/etc/nginx-manager/launcher.toml"]


def test_lintian_reports_no_errors_or_warnings(deb: Path) -> None:
    """Every tag left is overridden with its reason (packaging/deb/lintian-overrides)."""
    need_tool("lintian")
    result = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                            capture_output=True, text=True, timeout=600, check=False)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == []
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)  # a whole second package build (the subprocess's own limit)
def test_same_checkout_builds_the_same_bytes(wheels: Path, deb: Path, tmp_path: Path) -> None:
    """A second build, elsewhere and under another umask, is byte for byte the first."""
    again = subprocess.run(
        ["bash", "-c", f'umask 0002 && TZ=Asia/Tokyo exec bash "$0" --wheels {wheels} '
                       f"--output {tmp_path}", str(ROOT / "scripts" / "build-deb.sh")],
        check=True, capture_output=True, text=True, timeout=600)
    second = Path(again.stdout.strip().splitlines()[-1])
    assert second.name == deb.name
    assert second.read_bytes() == deb.read_bytes()


@pytest.fixture(scope="module")
def arm64_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheels-arm64")
    subprocess.run(["bash", str(ROOT / "scripts" / "fetch-wheels.sh"), "--arch", "arm64",
                    "--dest", str(dest)], check=True, capture_output=True, timeout=600)
    return dest


def test_arm64_package_builds_here_and_carries_arm64_code(arm64_wheels: Path,
                                                          tmp_path: Path) -> None:
    """Cross-built from the target's wheels: every compiled extension is an aarch64 ELF."""
    deb = build_deb(arm64_wheels, tmp_path / "out", "--arch", "arm64")
    assert deb.name == f"nginx-manager-agent_{VERSION}_arm64.deb"
    assert field(deb, "Architecture") == "arm64"
    with data_members(deb, tmp_path) as tar:
        shared = [m for m in tar.getmembers() if m.name.endswith(".so")]
        assert len(shared) >= 4  # cffi, cryptography, psutil, pydantic-core, watchfiles
        for member in shared:
            handle = tar.extractfile(member)
            assert handle is not None
            header = handle.read(20)
            assert header[:4] == b"\x7fELF"
            assert int.from_bytes(header[18:20], "little") == ELF_MACHINE["arm64"], member.name
