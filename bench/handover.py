"""Zero-downtime hand-over: a steady load through updates and rollbacks, three ways at once.

    .venv/bin/python bench/handover.py [ROUNDS] [RATE]

For each way of running the launcher, in the same run:

- ``today``: no ``--listen``; the agent binds its own port (the behaviour before issue 12);
- ``stop-first``: ``--listen`` (the launcher holds the port), ``--ready notify``;
- ``overlap``: ``--listen --ready notify --handover overlap``;

a load process (``load`` below, its own process) opens new connections at a fixed rate
(default 300/s), one ``GET /healthz`` each, timed from the instant it was due (so a
request that waits in a listen queue counts its whole wait). Meanwhile ROUNDS times
(default 20): a good build is published and committed (an update), then the operator
rolls it back (``nginx-manager-launcher rollback``). A request counts as "during a swap"
when it was due between the publish (or the rollback command) and 0.3 s after the new
agent answers; steady p99 is over the requests due outside every swap. Refused
connections, resets, timeouts and wrong answers are all counted as failures.

The agent's cold start (exec to first /healthz answer, ``update.cold_starts``) is the
reference for ``stop-first``; the steady p99 for ``overlap``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    VENV_PY,
    Figure,
    build,
    env_with_python3,
    free_port,
    health_version,
    med,
    publish,
    rss_kib,
    scratch,
    stop_proc,
    wait_for,
)
from update import cold_starts, committed, start_update_server, state

HERE = Path(__file__).resolve().parent
ROUNDS = 20
RATE = 300
SETTLE_S = 0.3
MODES = {
    "today": [],
    "stop-first": ["--ready", "notify"],
    "overlap": ["--ready", "notify", "--handover", "overlap"],
}


# ---- the load process ------------------------------------------------------------------

def load(port: int, out: Path, rate: float) -> None:
    """Fixed-rate new connections until SIGTERM; writes [[due, latency_s, outcome], ...]."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    results: list[tuple[float, float, str]] = []
    lock = threading.Lock()

    def one(due: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            body = resp.read()
            outcome = "ok" if resp.status == 200 and b'"ok"' in body else f"http {resp.status}"
        except ConnectionRefusedError:
            outcome = "refused"
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = "timeout"
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
        finally:
            conn.close()
        with lock:
            results.append((due, time.monotonic() - due, outcome))

    with concurrent.futures.ThreadPoolExecutor(max_workers=256) as pool:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
                if stop.is_set():
                    break
            pool.submit(one, due)
            n += 1
    out.write_text(json.dumps(results))


# ---- one mode ----------------------------------------------------------------------------

def run_mode(mode: str, rounds: int, rate: float, work: Path) -> dict[str, Any]:
    mdir = work / mode
    release, builds, sdir = mdir / "release", mdir / "builds", mdir / "state"
    builds.mkdir(parents=True)
    server, base = start_update_server(release)
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    publish("0.1.0", release, base, build("0.1.0", builds))
    listen = ["--listen", f"127.0.0.1:{port}"] if mode != "today" else []
    agent_addr = f"127.0.0.1:{free_port() if listen else port}"
    log = (mdir / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        [str(VENV_PY.parent / "nginx-manager-launcher"), "run", "--state-dir", str(sdir),
         "--manifest-url", f"{base}/version.json", "--allow-http", "--allow-unsigned",
         "--poll-interval", "0.3", "--jitter", "0", "--health-window", "2",
         "--health-url", url, *listen, *MODES[mode], "--", "run", "--health-addr", agent_addr],
        stdout=log, stderr=log, env=env_with_python3())
    swaps: list[tuple[float, float]] = []
    out = mdir / "load.json"
    loader = None
    try:
        wait_for(lambda: committed(sdir, "0.1.0") and health_version(url) == "0.1.0", 60,
                 f"{mode}: agent 0.1.0")
        loader = subprocess.Popen([str(VENV_PY), str(Path(__file__)), "load", str(port),
                                   str(out), str(rate)])
        time.sleep(2.0)  # steady state first
        previous = "0.1.0"
        for i in range(rounds):
            good = f"0.2.{i}"
            artifact = build(good, builds)
            t0 = time.monotonic()
            publish(good, release, base, artifact)
            wait_for(lambda v=good: committed(sdir, v) and health_version(url) == v, 60,
                     f"{mode}: {good} committed")
            time.sleep(SETTLE_S)
            swaps.append((t0, time.monotonic()))
            time.sleep(0.5)
            t0 = time.monotonic()
            subprocess.run([str(VENV_PY.parent / "nginx-manager-launcher"), "rollback",
                            "--state-dir", str(sdir)], check=True, capture_output=True)
            wait_for(lambda v=previous: health_version(url) == v
                     and committed(sdir, v), 60, f"{mode}: back to {previous}")
            time.sleep(SETTLE_S)
            swaps.append((t0, time.monotonic()))
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        if loader is not None:
            stop_proc(loader, 60)
        time.sleep(2.0)  # the resident idles a moment before its RSS is read
        rss = rss_kib(launcher.pid) / 1024 if launcher.poll() is None else float("nan")
        stop_proc(launcher)
        stop_proc(server)
        log.close()
    results = json.loads(out.read_text()) if out.exists() else []
    return {"results": results, "swaps": swaps, "rss_mib": rss, "bad": state(sdir).get("bad")}


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(mode: str, r: dict[str, Any]) -> dict[str, Any]:
    swaps = r["swaps"]

    def in_swap(due: float) -> bool:
        return any(a <= due <= b for a, b in swaps)

    ok_steady = [lat for due, lat, o in r["results"] if o == "ok" and not in_swap(due)]
    during = [lat for due, lat, o in r["results"] if o == "ok" and in_swap(due)]
    failed: dict[str, int] = {}
    for _, _, o in r["results"]:
        if o != "ok":
            failed[o] = failed.get(o, 0) + 1
    return {"mode": mode, "n": len(r["results"]), "failed": failed,
            "p99_ms": p(ok_steady, 0.99) * 1000, "worst_swap_ms": max(during, default=0) * 1000,
            "swaps": len(swaps), "rss_mib": r["rss_mib"]}


def run(rounds: int = ROUNDS, rate: float = RATE) -> list[Figure]:
    work = scratch("handover")
    cold = cold_starts(build("0.9.0", work), 10, work)
    cold_med = med(cold)
    s = {mode: summarise(mode, run_mode(mode, rounds, rate, work)) for mode in MODES}
    figs = [Figure("agent cold start (exec -> first /healthz answer)",
                   f"{cold_med:.1f} ms (median of {len(cold)})", "reference of stop-first",
                   "(reference)", data={"ms": cold})]
    for mode, x in s.items():
        n_failed = sum(x["failed"].values())
        figs.append(Figure(
            f"{mode}: refused/failed requests, {rounds} updates + {rounds} rollbacks at "
            f"{rate:g}/s", f"{n_failed} of {x['n']} {x['failed'] or ''}".strip(),
            "today, same run" if mode != "today" else "(reference)",
            "0" if mode != "today" else "(reference)",
            None if mode == "today" else n_failed == 0, data=x))
        if mode == "today":
            figs.append(Figure("today: worst latency during a swap (reference)",
                               f"{x['worst_swap_ms']:.1f} ms",
                               f"steady p99 {x['p99_ms']:.1f} ms", "(reference)"))
            continue
        if mode == "overlap":
            target = 2 * x["p99_ms"]
            figs.append(Figure(f"{mode}: worst latency during a swap",
                               f"{x['worst_swap_ms']:.1f} ms",
                               f"steady p99 {x['p99_ms']:.1f} ms",
                               f"<= 2x p99 = {target:.1f}", x["worst_swap_ms"] <= target))
        else:
            target = cold_med + 20
            figs.append(Figure(f"{mode}: worst latency during a swap",
                               f"{x['worst_swap_ms']:.1f} ms",
                               f"cold start {cold_med:.1f} ms (worst {max(cold):.1f}), "
                               f"steady p99 {x['p99_ms']:.1f} ms",
                               f"<= cold + 20 = {target:.1f}", x["worst_swap_ms"] <= target))
    figs.append(Figure("resident RSS after the run, per mode (info; idle.py compares it "
                       "with supervisord)",
                       ", ".join(f"{m} {x['rss_mib']:.1f} MiB" for m, x in s.items()),
                       "", "(info)"))
    return figs


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load(int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
        raise SystemExit(0)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else RATE
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    for fig in run(n, rate):
        print(f"{fig.name} | {fig.value} | {fig.reference} | {fig.target} | "
              f"{ {True: 'MET', False: 'MISSED', None: '-'}[fig.met] }", flush=True)
