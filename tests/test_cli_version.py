"""``nginx-manager-launcher --version`` prints the distribution's version, and only that."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from conftest import ROOT


def test_version_flag_prints_the_project_version() -> None:
    """The version the Debian package and the image are named after (pyproject.toml)."""
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "launcher", "--version"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout == f"{expected}\n"
