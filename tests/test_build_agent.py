"""The artifact builder: reproducible, executable, precompiled zipapp."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import build_agent  # noqa: E402 (packaging/ is not a package: found via the path above)

# What `--version` imports (the launcher's preflight), and every module of the package.
VERSION_MODULES = ["agent", "agent.cli", "agent.version", "agent._build", "agent.exit_codes"]
MODULES = [*VERSION_MODULES, "agent.health", "agent.nginx"]


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    """The same version built twice, in other places and processes, gives the same bytes."""
    first = build_agent.build_agent("1.2.3", tmp_path / "a" / "agent")
    second = tmp_path / "b" / "elsewhere"
    subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build_agent.py"), "1.2.3", "-o", str(second)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert first.read_bytes() == second.read_bytes()
    assert build_agent.build_agent("1.2.4", tmp_path / "c").read_bytes() != first.read_bytes()


def test_artifact_is_an_executable_zipapp(tmp_path: Path) -> None:
    """Shebang, mode 0755, sorted entries with fixed dates, a .pyc beside every .py."""
    artifact = build_agent.build_agent("1.2.3", tmp_path / "agent")
    assert artifact.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o755
    assert not list(tmp_path.glob(".agent.*")), "temporary file left behind"
    with zipfile.ZipFile(artifact) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        build_py = archive.read("agent/_build.py").decode()
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert not any("__pycache__" in name for name in names)
    sources = [name for name in names if name.endswith(".py")]
    assert {"__main__.py", "agent/__init__.py", "agent/cli.py", "agent/_build.py"} <= set(sources)
    assert {name + "c" for name in sources} == {n for n in names if n.endswith(".pyc")}
    assert "VERSION = '1.2.3'" in build_py
    assert not (ROOT / "agent" / "_build.py").exists(), "the builder wrote into the source tree"
    done = subprocess.run([str(artifact), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout == "1.2.3\n"


def test_imports_come_from_the_pyc(tmp_path: Path) -> None:
    """zipimport loads each agent module from its .pyc, never compiling the .py."""
    artifact = build_agent.build_agent("1.2.3", tmp_path / "agent")
    # -vv traces every archive path zipimport tries, in order: the first hit is taken.
    done = subprocess.run(
        [sys.executable, "-vv", str(artifact), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "1.2.3\n"
    tried = re.findall(r"^# trying (\S+)$", done.stderr, re.MULTILINE)
    for module in VERSION_MODULES:
        base = f"{artifact}{os.sep}{module.replace('.', '/')}"
        candidates = {base + suffix for suffix in ("/__init__.pyc", "/__init__.py", ".pyc", ".py")}
        mine = [path for path in tried if path in candidates]
        assert mine, f"{module} not imported from the archive"
        expected = base + ("/__init__.pyc" if module == "agent" else ".pyc")
        assert mine[-1] == expected, f"{module} ended on {mine[-1]}"
        assert expected.removesuffix("c") not in mine, f"{module} fell back to its source"
    # And the modules say so themselves: their origin is the .pyc inside the archive.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib\n"
        "for name in sys.argv[2:]: print(importlib.import_module(name).__spec__.origin)"
    )
    origins = subprocess.run(
        [sys.executable, "-c", probe, str(artifact), *MODULES],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert origins and all(origin.endswith(".pyc") for origin in origins), origins
    assert all(origin.startswith(str(artifact)) for origin in origins), origins
