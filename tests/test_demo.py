"""The README's demo runs end to end: build, serve, update, roll back, status, stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_demo_runs_end_to_end() -> None:
    """scripts/demo.py (what demo.sh runs after its venv set-up) shows a signed update, a
    refused replay and a rollback."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "Update found: 0.1.1. Synchronizing..." in text
    assert "'version': '0.1.1'" in text
    assert "manifest signature verified with key" in text
    assert "rollback: manifest 0.1.0 has serial" in text, "the replay is refused"
    assert "rolled back to 0.1.1" in text
    assert "signatures:  required" in text
    assert "bad build:   0.1.2" in text
    assert "launcher exited 0" in text
