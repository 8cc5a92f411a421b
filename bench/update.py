"""Update blackout and rollback latency of a real launcher, against the agent's cold start.

A real ``nginx-manager-launcher run`` polls ``packaging/update_server.py`` (its ETag has
nanosecond mtimes, so back-to-back releases are never mistaken for one another). Each round:

1. cold start: the artifact alone, spawned and probed every 0.5 ms until /healthz answers;
2. update: ``healthpoll.py watch`` probes the agent every 1 ms while a good build is
   published; blackout = first answer by the new version - last answer by the old one, and
   every refused connection in between is counted (a LISTEN_FDS hand-over would make it 0);
3. rollback: a build that passes the preflight but exits 3 at start, stamping the instant
   of its crash; latency = first answer by the previous version after it - the crash.

The launcher runs with ``--poll-interval 0.5 --jitter 0 --health-window 1`` and a health
URL, so a round takes seconds; stop grace and everything else are defaults.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import (
    ROOT,
    VENV_PY,
    Figure,
    build,
    crashing_build,
    env_with_python3,
    free_port,
    health_version,
    med,
    publish,
    scratch,
    stop_proc,
    summary,
    wait_for,
)

HERE = Path(__file__).resolve().parent
ROUNDS = 5
COLD_PER_ROUND = 2


def start_update_server(release: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [str(VENV_PY), str(ROOT / "packaging" / "update_server.py"), "--dir", str(release),
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://[\d.]+:(\d+)", proc.stdout.readline())
    assert match, "update server did not start"
    return proc, f"http://127.0.0.1:{match.group(1)}"


def state(state_dir: Path) -> dict:
    try:
        return dict(json.loads((state_dir / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def committed(state_dir: Path, version: str) -> bool:
    st = state(state_dir)
    return st.get("phase") == "committed" and (st.get("current") or {}).get("version") == version


def cold_starts(artifact: Path, n: int, work: Path) -> list[float]:
    port, out = free_port(), work / "cold.json"
    subprocess.run([str(VENV_PY), str(HERE / "healthpoll.py"), "coldstart", str(port), str(n),
                    str(out), "--", str(artifact), "run", "--health-addr",
                    f"127.0.0.1:{port}"], check=True, env=env_with_python3())
    result = json.loads(out.read_text())
    if result["stuck_on_sigterm"]:
        print(f"   warning: {result['stuck_on_sigterm']} agent(s) ignored SIGTERM for 10 s",
              flush=True)
    return [t * 1000 for t in result["times"]]


def watched(port: int, work: Path, action, done, timeout: float = 30.0) -> list:
    """Run ``action()`` while probing the agent every 1 ms; stop once ``done()``."""
    out = work / "watch.json"
    poller = subprocess.Popen([str(VENV_PY), str(HERE / "healthpoll.py"), "watch", str(port),
                               str(out), "0.001"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        action()
        wait_for(done, timeout, "the launcher to settle", step=0.05)
        time.sleep(0.2)
    finally:
        stop_proc(poller)
    return list(json.loads(out.read_text()))


def blackout(events: list, old: str, new: str) -> tuple[float, int]:
    first_new = next(i for i, (_, w) in enumerate(events) if w == new)
    last_old = max(i for i, (_, w) in enumerate(events[:first_new]) if w == old)
    refused = sum(1 for _, w in events[last_old:first_new] if w == "refused")
    return (events[first_new][0] - events[last_old][0]) * 1000, refused


def rollback_latency(events: list, previous: str, crashed_at: float) -> float:
    t = next(t for t, w in events if w == previous and t > crashed_at)
    return (t - crashed_at) * 1000


def run(rounds: int = ROUNDS) -> list[Figure]:
    work = scratch("update")
    release, builds, sdir = work / "release", work / "builds", work / "state"
    builds.mkdir()
    server, base = start_update_server(release)
    port = free_port()
    first = build("0.1.0", builds)
    publish("0.1.0", release, base, first)
    log = (work / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        [str(VENV_PY.parent / "nginx-manager-launcher"), "run", "--state-dir", str(sdir),
         "--manifest-url", f"{base}/version.json", "--allow-http", "--allow-unsigned",
         "--poll-interval", "0.5",
         "--jitter", "0", "--health-window", "1",
         "--health-url", f"http://127.0.0.1:{port}/healthz",
         "--", "run", "--health-addr", f"127.0.0.1:{port}"],
        stdout=log, stderr=log, env=env_with_python3())
    cold: list[float] = []
    gaps: list[float] = []
    refused: list[int] = []
    rollbacks: list[float] = []
    try:
        wait_for(lambda: health_version(f"http://127.0.0.1:{port}/healthz") == "0.1.0", 30,
                 "agent 0.1.0")
        current, minor = "0.1.0", 1
        for _ in range(rounds):
            good, bad = f"0.1.{minor}", f"0.1.{minor + 1}"
            minor += 2
            artifact = build(good, builds)
            cold += cold_starts(artifact, COLD_PER_ROUND, work)
            events = watched(port, work, lambda v=good, a=artifact: publish(v, release, base, a),
                             lambda v=good: committed(sdir, v))
            gap, n_refused = blackout(events, current, good)
            gaps.append(gap)
            refused.append(n_refused)
            current = good
            stamp = work / f"crash-{bad}"
            crasher = crashing_build(bad, builds, stamp)
            events = watched(
                port, work, lambda v=bad, c=crasher: publish(v, release, base, c),
                lambda v=bad, g=good, st=stamp: (committed(sdir, g)
                                       and any(b.get("version") == v
                                               for b in state(sdir).get("bad", []))
                                       and st.exists()))
            rollbacks.append(rollback_latency(events, good, float(stamp.read_text())))
    finally:
        stop_proc(launcher)
        stop_proc(server)
        log.close()
    cold_med = med(cold)
    return [
        Figure("agent cold start (exec -> first /healthz answer)", summary(cold, "ms"),
               "the reference of the two rows below", "(reference)", data={"ms": cold}),
        Figure("update blackout (old stops answering -> new answers)", summary(gaps, "ms"),
               f"cold start {cold_med:.1f} ms", f"<= cold start + 20 ms = {cold_med + 20:.1f}",
               med(gaps) <= cold_med + 20,
               note=f"launcher overhead {med(gaps) - cold_med:+.1f} ms", data={"ms": gaps}),
        Figure("rollback latency (new agent crashes -> previous answers)",
               summary(rollbacks, "ms"), f"cold start {cold_med:.1f} ms",
               f"<= cold start + 100 ms = {cold_med + 100:.1f}",
               med(rollbacks) <= cold_med + 100,
               note=f"launcher overhead {med(rollbacks) - cold_med:+.1f} ms",
               data={"ms": rollbacks}),
        Figure("refused connections during an update (stretch, report only)",
               f"{med(refused):.0f} per update, probing every ~1 ms "
               f"({min(refused)}-{max(refused)}, n={len(refused)})",
               "LISTEN_FDS hand-over would give 0", "(report only)", data={"n": refused}),
    ]


if __name__ == "__main__":
    for fig in run(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met,
              fig.note)
