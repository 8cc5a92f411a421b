"""Fleet simulation: requests per 10 s at the update server, and the staged rollout's pace.

A discrete-event simulation of N launchers that schedules every check with the launcher's
own code: ``launcher.policy.first_poll_delay``, ``next_poll_delay`` (jitter, back-off after
failures, Retry-After) and ``cohort`` / ``admitted`` for ``rollout.percent``. What the
resident does around them is modelled after ``launcher/supervisor.py``: a check that stages
a build swaps it and starts a trial; no check runs during the health window (60 s); the
commit schedules the next check with ``next_poll_delay``. Defaults: poll 300 s, jitter 60 s.

The seed's schedule is a fixed 5-minute loop (check, sleep 300 s) started at the restart.
Scenarios (peak / mean of requests per 10 s bin over the window):
- restart: the whole fleet restarts at t=0; window the first hour; manifest requests.
- release: a steady fleet (check phases spread over a poll period), a release at 100%
  published at t=600 s; window 30 min from then; manifest + binary requests.
- staged: the same, ``rollout.percent`` raised 1 -> 5 -> 25 -> 50 -> 100 every 20 min;
  prints the percent of the fleet updated over time.
- outage: the server answers 503 with ``Retry-After: 120`` for 15 min, then recovers;
  window the hour after recovery.
"""

from __future__ import annotations

import heapq
import random
import sys
from collections.abc import Callable

from common import Figure

from launcher import policy

POLL_S = 300.0
JITTER_S = 60.0
WINDOW_S = 60.0  # health window
BIN_S = 10.0
VERSION = "0.2.0"

FirstDelay = Callable[[float, float, random.Random], float]


def jitter_only_first_delay(poll_s: float, jitter_s: float, rng: random.Random) -> float:
    """The first-poll rule before the fleet figure was measured: within the jitter only."""
    return rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0


class Fleet:
    def __init__(self, n: int, seed: int = 1, first_delay: FirstDelay | None = None) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.first_delay = first_delay or policy.first_poll_delay
        self.cohorts = [policy.cohort(f"host-{i:06d}", VERSION) for i in range(n)]
        self.updated_at: list[float | None] = [None] * n
        self.failures = [0] * n
        self.requests: dict[int, int] = {}
        self.binaries: dict[int, int] = {}

    def count(self, t: float, table: dict[int, int]) -> None:
        b = int(t // BIN_S)
        table[b] = table.get(b, 0) + 1

    def simulate(self, horizon_s: float, *, restart: bool, percent: Callable[[float], float | None],
                 outage: tuple[float, float] | None = None) -> None:
        """``percent(t)``: None before the release, else its rollout percent at ``t``."""
        if restart:
            heap = [(self.first_delay(POLL_S, JITTER_S, self.rng), i) for i in range(self.n)]
        else:  # a fleet running for a long time: phases spread over one period
            heap = [(self.rng.uniform(0, POLL_S + JITTER_S / 2), i) for i in range(self.n)]
        heapq.heapify(heap)
        rng = self.rng
        while heap:
            t, i = heapq.heappop(heap)
            if t >= horizon_s:
                break
            self.count(t, self.requests)
            if outage and outage[0] <= t < outage[1]:
                self.failures[i] += 1
                delay = policy.next_poll_delay(POLL_S, JITTER_S, self.failures[i], 120.0, rng)
                heapq.heappush(heap, (t + delay, i))
                continue
            self.failures[i] = 0
            p = percent(t)
            if p is not None and self.updated_at[i] is None and policy.admitted(
                    self.cohorts[i], p):
                self.count(t, self.binaries)
                self.updated_at[i] = t
                commit = t + 1.0 + WINDOW_S
                heapq.heappush(heap, (commit + policy.next_poll_delay(
                    POLL_S, JITTER_S, 0, None, rng), i))
                continue
            heapq.heappush(heap, (t + policy.next_poll_delay(POLL_S, JITTER_S, 0, None, rng), i))

    def peak_mean(self, start: float, end: float, with_binaries: bool) -> tuple[float, int]:
        bins = range(int(start // BIN_S), int(end // BIN_S))
        counts = [self.requests.get(b, 0) + (self.binaries.get(b, 0) if with_binaries else 0)
                  for b in bins]
        return max(counts) / (sum(counts) / len(counts)), max(counts)

    def updated_fraction(self, t: float) -> float:
        return sum(1 for u in self.updated_at if u is not None and u <= t) / self.n * 100


def seed_peak_mean(n: int) -> float:
    """The seed's loop: every host checks at 0, 300, 600 ... s: all N in one 10 s bin."""
    bins_per_period = POLL_S / BIN_S
    return n / (n / bins_per_period)


STEPS = [(600.0, 1.0), (1800.0, 5.0), (3000.0, 25.0), (4200.0, 50.0), (5400.0, 100.0)]


def staged_percent(t: float) -> float | None:
    current = None
    for at, p in STEPS:
        if t >= at:
            current = p
    return current


def run(sizes: tuple[int, ...] = (10_000, 100_000)) -> list[Figure]:
    figs: list[Figure] = []
    for n in sizes:
        seed = seed_peak_mean(n)
        f = Fleet(n)
        f.simulate(3600, restart=True, percent=lambda t: None)
        restart, restart_peak = f.peak_mean(0, 3600, with_binaries=False)
        old = Fleet(n, first_delay=jitter_only_first_delay)
        old.simulate(3600, restart=True, percent=lambda t: None)
        before, _ = old.peak_mean(0, 3600, with_binaries=False)
        figs.append(Figure(
            f"fleet {n // 1000}k: peak/mean req per 10 s, first hour after a simultaneous "
            "restart", f"{restart:.2f} (peak {restart_peak} req/10 s)",
            f"seed's fixed 5-min schedule {seed:.1f}", "<= 1.3", restart <= 1.3,
            note=f"a first poll within the jitter only (before the fix): {before:.2f}",
            data={"current": restart, "jitter_only": before, "seed": seed}))
        r = Fleet(n)
        r.simulate(600 + 1800, restart=False, percent=lambda t: 100.0 if t >= 600 else None)
        rel_all, rel_peak = r.peak_mean(600, 2400, with_binaries=True)
        rel_manifest, _ = r.peak_mean(600, 2400, with_binaries=False)
        figs.append(Figure(
            f"fleet {n // 1000}k: peak/mean req per 10 s during a release at 100%",
            f"{rel_all:.2f} manifest+binary (peak {rel_peak}); manifest only {rel_manifest:.2f}",
            f"seed {seed:.1f} (and every binary in the same 10 s)", "<= 1.3", rel_all <= 1.3,
            data={"all": rel_all, "manifest": rel_manifest}))
        s = Fleet(n)
        s.simulate(7200, restart=False, percent=staged_percent)
        staged, staged_peak = s.peak_mean(600, 7200, with_binaries=True)
        staged_manifest, _ = s.peak_mean(600, 7200, with_binaries=False)
        pace = ", ".join(f"{int(t // 60)}m {s.updated_fraction(t):.1f}%"
                         for t in (900, 1800, 2400, 3000, 3600, 4200, 4800, 5400, 6000, 7200))
        figs.append(Figure(
            f"fleet {n // 1000}k: staged rollout 1/5/25/50/100% every 20 min from 10 min",
            f"peak/mean {staged:.2f} manifest+binary (peak {staged_peak}); "
            f"manifest only {staged_manifest:.2f}",
            f"seed {seed:.1f}", "<= 1.3", staged <= 1.3, note=f"updated: {pace}",
            data={"peak_mean": staged}))
        o = Fleet(n)
        o.simulate(600 + 900 + 3600, restart=False, percent=lambda t: None,
                   outage=(600.0, 1500.0))
        out, out_peak = o.peak_mean(1500, 5100, with_binaries=False)
        figs.append(Figure(
            f"fleet {n // 1000}k: 15-min outage (503, Retry-After 120), hour after recovery",
            f"peak/mean {out:.2f} (peak {out_peak})", f"seed {seed:.1f}", "<= 1.3",
            out <= 1.3, data={"peak_mean": out}))
    return figs


if __name__ == "__main__":
    sizes = tuple(int(x) for x in sys.argv[1:]) or (10_000,)
    for fig in run(sizes):
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.met,
              fig.note)
