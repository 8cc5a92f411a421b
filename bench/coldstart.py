"""Agent cold start: the zipapp artifact vs the same agent installed in a venv.

The installed venv is made the way pip installs a pure-Python package: a fresh venv
(``--without-pip``, same base interpreter), the ``agent`` package copied into its
site-packages and byte-compiled (pip compiles on install), and pip's console-script wrapper
as ``bin/nginx-manager-agent``. Both are timed by ``healthpoll.py coldstart`` (spawn ->
first 200 from /healthz), in alternating batches. One more row runs the artifact through
its default ``#!/usr/bin/env python3`` shebang, which on this machine is a pyenv shim.
"""

from __future__ import annotations

import compileall
import json
import shutil
import subprocess
import sysconfig
from pathlib import Path

from common import ROOT, VENV_PY, Figure, build_agent, free_port, med, scratch, summary

HERE = Path(__file__).resolve().parent
BATCHES = 8
PER_BATCH = 2

WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from agent.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def installed_venv(work: Path) -> Path:
    venv = work / "venv"
    subprocess.run([str(VENV_PY), "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv)})
    target = Path(purelib) / "agent"
    shutil.copytree(ROOT / "agent", target, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(target), quiet=1)
    script = venv / "bin" / "nginx-manager-agent"
    script.write_text(WRAPPER.format(python=venv / "bin" / "python"))
    script.chmod(0o755)
    return script


def times(argv: list[str], n: int, work: Path) -> list[float]:
    port, out = free_port(), work / "cold.json"
    subprocess.run([str(VENV_PY), str(HERE / "healthpoll.py"), "coldstart", str(port), str(n),
                    str(out), "--", *argv, "run", "--health-addr", f"127.0.0.1:{port}"],
                   check=True)
    result = json.loads(out.read_text())
    if result["stuck_on_sigterm"]:
        print(f"   warning: {result['stuck_on_sigterm']} agent(s) ignored SIGTERM for 10 s",
              flush=True)
    return [t * 1000 for t in result["times"]]


def run(batches: int = BATCHES) -> list[Figure]:
    work = scratch("coldstart")
    artifact = build_agent.build_agent("0.1.0", work / "agent-0.1.0", python=str(VENV_PY))
    shim = build_agent.build_agent("0.1.0", work / "agent-0.1.0-env")
    script = installed_venv(work)
    art: list[float] = []
    inst: list[float] = []
    for _ in range(batches):
        art += times([str(artifact)], PER_BATCH, work)
        inst += times([str(script)], PER_BATCH, work)
    env_rows = times([str(shim)], PER_BATCH, work)
    which = shutil.which("python3") or "?"
    ratio = med(art) / med(inst)
    return [
        Figure("agent artifact cold start (zipapp, precompiled)", summary(art, "ms"),
               f"installed venv {summary(inst, 'ms')}", "<= 1.1x", ratio <= 1.1,
               note=f"ratio {ratio:.2f}x", data={"artifact_ms": art, "venv_ms": inst}),
        Figure("artifact via '#!/usr/bin/env python3' (info)", summary(env_rows, "ms"),
               f"python3 on PATH here: {which}", "(info)", data={"ms": env_rows}),
    ]


if __name__ == "__main__":
    for fig in run(2):
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met,
              fig.note)
