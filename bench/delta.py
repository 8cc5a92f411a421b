"""Delta updates on real releases: bytes per host, patch vs full; apply time and memory.

The binaries are real native executables of consecutive releases, fetched once through the
package registries' own clients and cached in ``$BENCH_CACHE`` (default ~/.cache/nma-bench):
esbuild (Go) from npm's ``@esbuild/linux-x64`` packages, ruff (Rust, with its symbol table)
from PyPI's manylinux wheels, biome (Rust, stripped) from npm's ``@biomejs/cli-linux-x64``,
clang-format (C++, LLVM's) from PyPI's ``clang-format`` wheels. Pairs: a patch release and a
minor release of esbuild and ruff, a bug-fix release of biome and of clang-format.

Per pair: the full build's size; the ``zstd-patch`` the release tool publishes
(``packaging/release_deltas.make_patch``, level 19 + long matching) and, as the reference
format, a ``bsdiff4`` patch (``pip install bsdiff4`` to include it); the launcher's own apply
(``launcher.delta.apply_patch``) timed in a fresh process, with its peak RSS growth (VmHWM
after - before the call) against the 2x-the-build bound. Patches are cached beside the
binaries (making one takes 10 s to 2 min). Results go to ``$BENCH_CACHE/delta.json`` for
``bench/fleet_delta.py``.

    .venv/bin/python bench/delta.py            # all pairs
    .venv/bin/python bench/delta.py --quick    # the esbuild pairs only
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from common import ROOT, VENV_PY, Figure

sys.path.insert(0, str(ROOT / "packaging"))
from release_deltas import make_patch

CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "nma-bench"))

# (program, old, new, kind)
PAIRS = [
    ("esbuild", "0.24.1", "0.24.2", "patch"),
    ("esbuild", "0.23.1", "0.24.0", "minor"),
    ("ruff", "0.6.8", "0.6.9", "patch"),
    ("ruff", "0.5.7", "0.6.0", "minor"),
    ("biome", "1.9.3", "1.9.4", "patch"),
    ("clang-format", "18.1.7", "18.1.8", "patch"),
]
NPM = {  # program: (package, the executable inside its tarball)
    "esbuild": ("@esbuild/linux-x64", "package/bin/esbuild"),
    "biome": ("@biomejs/cli-linux-x64", "package/biome"),
}
PYPI = {  # program: (the wheel's file name prefix, the executable's path's end inside it)
    "ruff": ("ruff", "/scripts/ruff"),
    "clang-format": ("clang_format", "/bin/clang-format"),
}
TARGET = {"patch": 5.0, "minor": 25.0}

CHILD = r"""
import hashlib, json, re, sys, time
from pathlib import Path
from launcher import delta

def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

base, patch, out, sha, size = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), \
    sys.argv[4], int(sys.argv[5])
import zstandard  # imported before the baseline, as the worker has it by then
before = hwm()
t0 = time.perf_counter()
path = delta.apply_patch(base, patch, out, expected_sha256=sha, expected_size=size)
wall = time.perf_counter() - t0
after = hwm()
path.unlink()
print(json.dumps({"wall": wall, "growth_kib": after - before}))
"""


def binary(program: str, version: str) -> Path:
    """The program's executable for ``version``, fetched and unpacked once."""
    out = CACHE / "bin" / f"{program}-{version}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if program in NPM:
        package, inside = NPM[program]
        tarball = package.lstrip("@").replace("/", "-")  # what npm pack names it
        pack = CACHE / "npm" / f"{tarball}-{version}.tgz"
        if not pack.exists():
            pack.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"],
                           cwd=pack.parent, check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(pack) as tar:
            member = tar.extractfile(inside)
            assert member is not None
            data = member.read()
    else:
        prefix, inside = PYPI[program]
        wheels = CACHE / "wheels"
        found = sorted(wheels.glob(f"{prefix}-{version}-*manylinux*x86_64*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "--platform", "manylinux_2_17_x86_64",
                            "--python-version", "3.11", "-d", str(wheels),
                            f"{program}=={version}"], check=True)
            found = sorted(wheels.glob(f"{prefix}-{version}-*manylinux*x86_64*.whl"))
        with zipfile.ZipFile(found[0]) as whl:
            name = next(n for n in whl.namelist() if n.endswith(inside))
            data = whl.read(name)
    out.write_bytes(data)
    out.chmod(0o755)
    return out


def cached_patch(old: Path, new: Path, fmt: str) -> tuple[Path, float | None]:
    """The patch (cached) and the seconds making it took, None when it came from the cache."""
    path = CACHE / "patches" / f"{old.name}--{new.name}.{fmt}"
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if fmt == "zst":
        data = make_patch(old, new)
    else:
        import bsdiff4  # type: ignore[import-not-found]

        data = bsdiff4.diff(old.read_bytes(), new.read_bytes())
    took = time.perf_counter() - t0
    path.write_bytes(data)
    return path, took


def apply_once(old: Path, patch: Path, new: Path) -> dict[str, float]:
    data = new.read_bytes()
    out = CACHE / "apply"
    out.mkdir(exist_ok=True)
    done = subprocess.run(
        [str(VENV_PY), "-c", CHILD, str(old), str(patch), str(out),
         hashlib.sha256(data).hexdigest(), str(len(data))],
        capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def have_bsdiff() -> bool:
    try:
        import bsdiff4  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False) -> list[Figure]:
    figs: list[Figure] = []
    results = []
    for program, a, b, kind in PAIRS:
        if quick and program != "esbuild":
            continue
        old, new = binary(program, a), binary(program, b)
        full = new.stat().st_size
        zst, made = cached_patch(old, new, "zst")
        ratio = 100 * zst.stat().st_size / full
        runs = [apply_once(old, zst, new) for _ in range(3)]
        wall = sorted(r["wall"] for r in runs)[1]
        growth = max(r["growth_kib"] for r in runs) * 1024
        ref = ""
        bs_size = None
        if have_bsdiff():
            bs, _ = cached_patch(old, new, "bsdiff")
            bs_size = bs.stat().st_size
            ref = f"bsdiff4 {bs_size / 1e6:.2f} MB ({100 * bs_size / full:.1f}%)"
        made_note = f", made in {made:.0f} s" if made is not None else ""
        figs.append(Figure(
            f"delta {program} {a} -> {b} ({kind}): bytes per host, patch vs full",
            f"{zst.stat().st_size / 1e6:.3f} MB of {full / 1e6:.1f} MB = {ratio:.2f}%",
            ref, f"<= {TARGET[kind]:g}%", ratio <= TARGET[kind],
            note=f"zstd-patch{made_note}"))
        figs.append(Figure(
            f"delta {program} {a} -> {b}: apply time, worker peak RSS growth",
            f"{wall:.2f} s, {growth / 1e6:.1f} MB = {growth / full:.2f}x the build", "",
            "RSS growth <= 2x", growth <= 2 * full))
        results.append({"program": program, "old": a, "new": b, "kind": kind, "full": full,
                        "patch": zst.stat().st_size, "bsdiff4": bs_size, "apply_s": wall,
                        "rss_growth": growth})
    (CACHE / "delta.json").write_text(json.dumps(results, indent=2))
    return figs


if __name__ == "__main__":
    for fig in run(quick="--quick" in sys.argv):
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|",
              "met" if fig.met else "NOT met", fig.note)
