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
rolls it back (``nginx-manager-launcher rollback``). The release is a watched ``file://``
directory and the poll interval an hour, so a publish is checked at once and no check runs
between swaps (as on a host, whose checks are minutes apart). A request counts as "during
a swap" when it was due between the publish (or the rollback command) and 0.3 s after the
new agent answers; steady p99 is over the requests due outside every swap (the health
window until the commit included: the new agent serves by then). Refused
connections, resets, timeouts and wrong answers are all counted as failures.

The agent's cold start (exec to first /healthz answer, ``update.cold_starts``) is the
reference for ``stop-first``; the steady p99 for ``overlap``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
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
from update import cold_starts, committed, state

HERE = Path(__file__).resolve().parent
ROUNDS = 20
RATE = 300
SETTLE_S = 0.3
POLL_S = 3600  # the release directory is watched; no check runs between swaps
MODES = {
    "today": [],
    "stop-first": ["--ready", "notify"],
    "overlap": ["--ready", "notify", "--handover", "overlap"],
}


# ---- the load process ------------------------------------------------------------------

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
TIMEOUT_S = 10.0


def load(port: int, out: Path, rate: float) -> None:
    """Fixed-rate new connections until SIGTERM; writes [[due, latency_s, outcome], ...].

    One thread and non-blocking sockets (``selectors``): a request's time is the server's,
    not the wait of one of hundreds of client threads for the GIL (a thread pool measured
    its own GIL hand-offs, 5 ms each, and took a third of a core at 300/s)."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    results: list[tuple[float, float, str]] = []
    sel = selectors.DefaultSelector()
    live: dict[socket.socket, tuple[float, bytearray]] = {}  # socket -> due, answer so far

    def done(sock: socket.socket, outcome: str) -> None:
        due, _ = live.pop(sock)
        sel.unregister(sock)
        sock.close()
        results.append((due, time.monotonic() - due, outcome))

    def ready(sock: socket.socket, events: int) -> None:
        answer = live[sock][1]
        try:
            if events & selectors.EVENT_WRITE:  # connected (or refused)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                sock.sendall(REQUEST)
                sel.modify(sock, selectors.EVENT_READ)
                return
            chunk = sock.recv(4096)
        except ConnectionRefusedError:
            return done(sock, "refused")
        except ConnectionResetError:
            return done(sock, "reset")
        except OSError as exc:
            return done(sock, {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}.get(
                exc.errno or 0, type(exc).__name__))
        if chunk:
            answer += chunk
            return None
        ok = answer.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")) and b'"ok"' in answer
        return done(sock, "ok" if ok else f"http {bytes(answer[9:12]).decode(errors='replace')}")

    start = time.monotonic()
    n = 0
    while not stop:
        now = time.monotonic()
        while start + n / rate <= now:  # every connection due by now, in order
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            live[sock] = (start + n / rate, bytearray())
            sock.connect_ex(("127.0.0.1", port))
            sel.register(sock, selectors.EVENT_WRITE)
            n += 1
        for sock in [s for s, (due, _) in live.items() if now - due > TIMEOUT_S]:
            done(sock, "timeout")
        for key, events in sel.select(max(0.0, start + n / rate - time.monotonic())):
            ready(key.fileobj, events)  # type: ignore[arg-type]
    out.write_text(json.dumps(results))


# ---- one mode ----------------------------------------------------------------------------

def run_mode(mode: str, rounds: int, rate: float, work: Path) -> dict[str, Any]:
    mdir = work / mode
    release, builds, sdir = mdir / "release", mdir / "builds", mdir / "state"
    builds.mkdir(parents=True)
    release.mkdir()
    base = f"file://{release}"  # watched: a publish is checked at once, no polling needed
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    publish("0.1.0", release, base, build("0.1.0", builds))
    listen = ["--listen", f"127.0.0.1:{port}"] if mode != "today" else []
    agent_addr = f"127.0.0.1:{free_port() if listen else port}"
    log = (mdir / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        [str(VENV_PY.parent / "nginx-manager-launcher"), "run", "--state-dir", str(sdir),
         "--manifest-url", f"{base}/version.json", "--allow-unsigned",
         "--poll-interval", str(POLL_S), "--jitter", "0", "--health-window", "2",
         "--health-url", url, "--log-format", "json", *listen, *MODES[mode], "--", "run",
         "--health-addr", agent_addr],
        stdout=log, stderr=log, env=env_with_python3())
    swaps: list[tuple[float, float]] = []
    out = mdir / "load.json"
    loader = None

    def swap(t0: float, version: str, what: str) -> None:
        """From ``t0`` until ``version`` answers, plus SETTLE_S; then until it is committed
        (the health window, outside the swap: the new agent is serving by then)."""
        wait_for(lambda: health_version(url) == version, 60, f"{mode}: {what} answers")
        time.sleep(SETTLE_S)
        swaps.append((t0, time.monotonic()))
        wait_for(lambda: committed(sdir, version), 60, f"{mode}: {what} committed")
        time.sleep(0.5)

    try:
        wait_for(lambda: committed(sdir, "0.1.0") and health_version(url) == "0.1.0", 60,
                 f"{mode}: agent 0.1.0")
        loader = subprocess.Popen([str(VENV_PY), str(Path(__file__)), "load", str(port),
                                   str(out), str(rate)])
        time.sleep(2.0)  # steady state first
        for i in range(rounds):
            good = f"0.2.{i}"
            artifact = build(good, builds)
            t0 = time.monotonic()
            publish(good, release, base, artifact)
            swap(t0, good, good)
            t0 = time.monotonic()
            subprocess.run([str(VENV_PY.parent / "nginx-manager-launcher"), "rollback",
                            "--state-dir", str(sdir)], check=True, capture_output=True)
            swap(t0, "0.1.0", f"the rollback from {good}")
        time.sleep(1.0)
    finally:
        if loader is not None:
            stop_proc(loader, 60)
        time.sleep(2.0)  # the resident idles a moment before its RSS is read
        rss = rss_kib(launcher.pid) / 1024 if launcher.poll() is None else float("nan")
        stop_proc(launcher)
        log.close()
    results = json.loads(out.read_text()) if out.exists() else []
    run = {"results": results, "swaps": swaps, "rss_mib": rss, "bad": state(sdir).get("bad"),
           "starts": agent_starts(mdir / "launcher.log")}
    (mdir / "run.json").write_text(json.dumps(run))  # for a closer look: every request
    return run


def agent_starts(log: Path) -> list[tuple[float, float]]:
    """(exec, READY=1) of every agent the launcher started, on this process's monotonic
    clock, from the launcher's JSON log (millisecond times)."""
    offset = time.time() - time.monotonic()
    started: dict[str, float] = {}
    starts = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
            when = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue  # the agent's own lines
        message = str(event.get("message", ""))
        if (m := re.match(r"started agent \S+ \(pid (\d+)\)", message)):
            started[m.group(1)] = when - offset
        elif (m := re.match(r"agent \S+ \(pid (\d+)\) is ready", message)) \
                and m.group(1) in started:
            starts.append((started.pop(m.group(1)), when - offset))
    return starts


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
    # The worst of as many requests as the swaps had, when nothing happens: the steady
    # requests in chunks of len(during), in order; the median chunk's worst.
    chunks = [ok_steady[i:i + len(during)] for i in
              range(0, len(ok_steady) - len(during) + 1, max(len(during), 1))]
    steady_worst = sorted(max(c) for c in chunks if c)
    # Per swap: its worst request, less the new agent's exec-to-READY in that swap.
    overheads = []
    for a, b in swaps:
        worst = max((lat for due, lat, o in r["results"] if o == "ok" and a <= due <= b),
                    default=0.0)
        starts = [ready - ex for ex, ready in r["starts"] if a <= ex <= b]
        if starts:
            overheads.append((worst - starts[-1]) * 1000)
    return {"mode": mode, "n": len(r["results"]), "failed": failed,
            "p99_ms": p(ok_steady, 0.99) * 1000, "worst_swap_ms": max(during, default=0) * 1000,
            "n_swap": len(during), "swaps": len(swaps), "rss_mib": r["rss_mib"],
            "steady_worst_ms": steady_worst[len(steady_worst) // 2] * 1000
            if steady_worst else float("nan"), "steady_chunks": len(steady_worst),
            "overhead_ms": sorted(overheads)}


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
            over = x["overhead_ms"]
            figs.append(Figure(
                f"{mode}: per swap, worst request - that swap's exec-to-READY (info)",
                f"median {over[len(over) // 2]:.1f} ms, worst {over[-1]:.1f} ms" if over
                else "no READY seen", f"{len(over)} swaps", "(info: the hand-over's own cost)"))
        figs.append(Figure(
            f"{mode}: steady worst of {x['n_swap']} requests in a row (info)",
            f"{x['steady_worst_ms']:.1f} ms", f"median of {x['steady_chunks']} runs of "
            f"{x['n_swap']} steady requests", "(info: the worst a swap is up against)"))
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
