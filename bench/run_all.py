"""Every performance figure of docs/PERFORMANCE.md, with its reference, in one run.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--json FILE]

Sets up what it needs first: nginx (``apt-get install nginx-light`` when missing) and
supervisord (``pip install supervisor`` into this venv, the ``bench`` extra). All traffic
is on loopback; scratch files go to ``$BENCH_SCRATCH`` (default the temp dir)/nma-bench.
About 2 minutes on a 2-core VM; ``--quick`` runs fewer repetitions and the 10k fleet only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHES = ("idle", "update", "download", "poll", "coldstart", "fleet", "delta", "delta_floor",
           "fleet_delta", "resume", "metrics", "handover")


def ensure_tools() -> None:
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("setup: installing nginx-light with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)
    if not (Path(sys.executable).parent / "supervisord").exists():
        print("setup: installing supervisor into the venv", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "supervisor>=4.2"],
                       check=True)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed: apt-get install curl")


def verdict(met: bool | None) -> str:
    return {True: "MET", False: "MISSED", None: "-"}[met]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    ensure_tools()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    quick = {"idle": (10.0,), "update": (2,), "download": (2,), "coldstart": (3,),
             "fleet": ((10_000,),), "delta": (True,), "handover": (3,)}
    figures = []
    for name in args.only:
        mod = importlib.import_module(name)
        t0 = time.monotonic()
        print(f"== {name} ...", flush=True)
        figs = mod.run(*quick.get(name, ())) if args.quick else mod.run()
        print(f"   {name} took {time.monotonic() - t0:.0f} s", flush=True)
        figures += [(name, f) for f in figs]
    print()
    print(f"{'figure':<78} {'value':<48} {'reference (same run)':<44} {'target':<24} verdict")
    for _, f in figures:
        print(f"{f.name:<78} {f.value:<48} {f.reference:<44} {f.target:<24} {verdict(f.met)}")
        if f.note:
            print(f"{'':<4}note: {f.note}")
    if args.json:
        args.json.write_text(json.dumps([
            {"bench": b, "name": f.name, "value": f.value, "reference": f.reference,
             "target": f.target, "met": f.met, "note": f.note, "data": f.data}
            for b, f in figures], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
