"""The cost of ``--metrics-file``: rendering and writing the Prometheus file after every event.

The resident rewrites the file after every journal write, so the reference is that write,
in the same run: ``TolerantJournal.save`` of the same state (temp file, fsync, rename, fsync
of the directory, the ``state.json.prev`` link). Both are timed with ``time.perf_counter``
over ``n`` writes of a realistic state (a trial under way, two bad builds, counters), each
in its own scratch directory on the same filesystem, and the whole journal write of a
resident with a metrics file (``MeteredJournal.save``) is timed too; the three take turns.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import Figure, med, scratch, summary

from launcher import metrics
from launcher.journal import BadBuild, Build, ChildInfo, State, TolerantJournal, Trial, new_state
from launcher.settings import Settings


def sample_state() -> State:
    cur, prev = Build("1.5.0", "a" * 64), Build("1.4.2", "b" * 64)
    state = dataclasses.replace(
        new_state(), phase="trial", current=cur, previous=prev,
        trial=Trial(cur, "2026-12-01T12:00:00Z", 21.5, True),
        child=ChildInfo(4242, "1.5.0", "running", "2026-12-01T12:00:00Z"),
        bad=(BadBuild("1.4.9", "c" * 64, "agent exited with code 3 after 0.2s", "x"),
             BadBuild("1.4.8", "d" * 64, "rolled back by the operator", "x")))
    for kind in ("transport", "transport", "signature"):
        state = metrics.count_check(state, {"outcome": "error", "error_kind": kind}, 1.7e9)
    return metrics.count_check(state, {"outcome": "not_modified"}, 1.7e9)


def timed(fns: list[Callable[[], object]], n: int) -> list[list[float]]:
    """Milliseconds per call of each of ``fns``, taken in turn (so the machine's load
    changes hit all of them alike)."""
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            out[i].append((time.perf_counter() - t0) * 1000)
    return out


def run(n: int = 300) -> list[Figure]:
    work = scratch("metrics")
    state = sample_state()
    plain_dir, metered_dir = work / "plain", work / "metered"
    plain_dir.mkdir()
    metered_dir.mkdir()
    s = Settings(state_dir=metered_dir, metrics_file=work / "nginx_manager.prom")
    plain = TolerantJournal(plain_dir)
    metered = metrics.MeteredJournal(metered_dir, lambda: s, time.time)
    journal_ms, file_ms, both_ms = timed([
        lambda: plain.save(state),
        lambda: metrics.write(s.metrics_file or Path(), metrics.render(state, s, time.time())),
        lambda: metered.save(state)], n)
    size = len(metrics.render(state, s, time.time()).encode())
    ratio = med(file_ms) / med(journal_ms)
    return [
        Figure("metrics file: render + write (temp, rename) per event",
               summary(file_ms, "ms", ".3f"), f"journal save {summary(journal_ms, 'ms', '.3f')}",
               "well under the journal write", ratio < 0.5,
               note=f"{size} bytes; {ratio:.2f}x the journal write it follows",
               data={"file_ms": file_ms, "journal_ms": journal_ms, "bytes": size}),
        Figure("journal save with --metrics-file (MeteredJournal)",
               summary(both_ms, "ms", ".3f"), f"without {summary(journal_ms, 'ms', '.3f')}",
               "(info)", None, data={"both_ms": both_ms}),
    ]


if __name__ == "__main__":
    for fig in run(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
        print(f"{fig.name}: {fig.value}; reference {fig.reference}; {fig.note}")
