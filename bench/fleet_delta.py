"""Server egress for one release to a 10k-host fleet, with deltas vs full downloads.

The fleet is ``bench/fleet.py``'s simulation (the launcher's own poll schedule, jitter and
rollout code; a steady fleet, a release at 100% published at t=600 s, 30 min observed). What
each host downloads comes from ``bench/delta.py``'s measurements on real releases
(``$BENCH_CACHE/delta.json``): a host on the release the patch starts from gets the patch, the
others the full build. The fleet's spread over releases is an input: ``ON_BASE`` of the hosts
run the previous release (the rest run older builds no published patch starts from). Every
host also fetches the new manifest once (its size measured from a real manifest with one
delta per platform).

Draws into docs/: requests per 10 s over time (``fleet-requests.svg``), the fleet share
updated over time (``fleet-updated.svg``) and cumulative egress, full vs delta
(``fleet-egress.svg``), for the patch release.

    .venv/bin/python bench/delta.py --quick && .venv/bin/python bench/fleet_delta.py
"""

from __future__ import annotations

import json
import random
import sys

from common import ROOT, Figure
from delta import CACHE
from fleet import BIN_S, Fleet
from svg import line_chart

N = 10_000
RELEASE_AT = 600.0
HORIZON = RELEASE_AT + 1800.0
ON_BASE = 0.90
MANIFEST_BYTES = 1_450  # a signed version.json with two platforms and one delta each
DOCS = ROOT / "docs"


def measured(kind: str) -> dict[str, object]:
    path = CACHE / "delta.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run bench/delta.py first")
    results = json.loads(path.read_text())
    return next(r for r in results if r["kind"] == kind and r["program"] == "esbuild")


def simulate(pair: dict[str, object], n: int = N, seed: int = 7) -> dict[str, object]:
    fleet = Fleet(n, seed=seed)
    fleet.simulate(HORIZON, restart=False, percent=lambda t: 100.0 if t >= RELEASE_AT else None)
    rng = random.Random(f"on-base-{seed}")  # not the fleet's own sequence: uncorrelated
    on_base = [rng.random() < ON_BASE for _ in range(n)]
    full, patch = int(pair["full"]), int(pair["patch"])  # type: ignore[call-overload]
    bins = int(HORIZON // BIN_S)
    egress_full = [0.0] * bins
    egress_delta = [0.0] * bins
    for i, t in enumerate(fleet.updated_at):
        if t is None:
            continue
        b = min(int(t // BIN_S), bins - 1)
        egress_full[b] += full + MANIFEST_BYTES
        egress_delta[b] += (patch if on_base[i] else full) + MANIFEST_BYTES
    updated = sum(1 for t in fleet.updated_at if t is not None)
    return {"fleet": fleet, "full": sum(egress_full), "delta": sum(egress_delta),
            "egress_full": egress_full, "egress_delta": egress_delta, "updated": updated}


def cumulative(values: list[float]) -> list[tuple[float, float]]:
    total, points = 0.0, []
    for b, v in enumerate(values):
        total += v
        points.append(((b * BIN_S - RELEASE_AT) / 60, total))
    return points


def draw(result: dict[str, object], pair: dict[str, object]) -> list[str]:
    fleet: Fleet = result["fleet"]  # type: ignore[assignment]
    bins = range(int((RELEASE_AT - 300) // BIN_S), int(HORIZON // BIN_S))
    minutes = [(b * BIN_S - RELEASE_AT) / 60 for b in bins]
    manifest = [float(fleet.requests.get(b, 0)) for b in bins]
    binaries = [float(fleet.binaries.get(b, 0)) for b in bins]
    label = f"esbuild {pair['old']} -> {pair['new']}, {N // 1000}k hosts"
    line_chart(DOCS / "fleet-requests.svg", f"Requests per 10 s, release at t=0 ({label})",
               {"manifest checks": list(zip(minutes, manifest, strict=True)),
                "build or patch downloads": list(zip(minutes, binaries, strict=True))},
               xlabel="minutes since the release", ylabel="requests per 10 s")
    line_chart(DOCS / "fleet-updated.svg", f"Fleet share updated ({label})",
               {"updated %": [(m, fleet.updated_fraction(m * 60 + RELEASE_AT))
                              for m in minutes]},
               xlabel="minutes since the release", ylabel="% of hosts on the new release")
    start = int((RELEASE_AT - 300) // BIN_S)
    full = cumulative(result["egress_full"])[start:]  # type: ignore[arg-type]
    delta = cumulative(result["egress_delta"])[start:]  # type: ignore[arg-type]
    line_chart(DOCS / "fleet-egress.svg", f"Server egress, cumulative bytes ({label})",
               {"full downloads": full,
                f"deltas ({ON_BASE:.0%} on the base)": delta},
               xlabel="minutes since the release", ylabel="bytes sent")
    return ["fleet-requests.svg", "fleet-updated.svg", "fleet-egress.svg"]


def run(draw_pictures: bool = True) -> list[Figure]:
    figs = []
    for kind in ("patch", "minor"):
        pair = measured(kind)
        result = simulate(pair)
        full, delta = float(result["full"]), float(result["delta"])  # type: ignore[arg-type]
        figs.append(Figure(
            f"fleet {N // 1000}k, one {kind} release (esbuild {pair['old']} -> {pair['new']}):"
            " server egress with deltas",
            f"{delta / 1e9:.2f} GB = {100 * delta / full:.1f}% of full",
            f"full downloads {full / 1e9:.2f} GB", "reported", None,
            note=f"{result['updated']} hosts updated in 30 min; {ON_BASE:.0%} on the base"))
        if draw_pictures and kind == "patch":
            figs[-1].note += "; drew " + ", ".join(draw(result, pair))
    return figs


if __name__ == "__main__":
    for fig in run():
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|", fig.note)
    sys.exit(0)
