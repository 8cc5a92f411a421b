"""The resident launcher stays a bare supervisor: standard library and psutil only, and not
the heavier parts of the standard library it has no use for while idle."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

KEPT_OUT = ["httpx", "pydantic", "packaging", "cryptography", "watchfiles", "hashlib", "ssl",
            "http.client", "email.parser", "tomllib", "uuid", "zoneinfo"]


def test_resident_imports_no_worker_libraries() -> None:
    """Importing the CLI and the supervisor loads none of the worker's libraries."""
    code = ("import json, sys, launcher.cli, launcher.supervisor; "
            f"print(json.dumps([m for m in {KEPT_OUT!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == []


def test_oneshot_helpers_compare_and_hash(tmp_path: object) -> None:
    """The helpers the resident offloads to give the answers it relies on."""
    from pathlib import Path

    from launcher.oneshot import main

    f = Path(str(tmp_path)) / "f"
    f.write_bytes(b"abc")
    out = subprocess.run([sys.executable, "-m", "launcher.oneshot", "sha256", str(f),
                          str(f) + ".missing"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == [
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "-"]
    order = subprocess.run([sys.executable, "-m", "launcher.oneshot", "compare", "0.10.0",
                            "0.9.1"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert order.stdout.strip() == "1"
    assert main(["compare", "x", "1"]) == 2
    assert main([]) == 2
