"""Pure decisions of the update cycle: newer?, bad?, in the rollout?, and how long to wait.

No I/O and no hidden state: every input is a value, randomness comes in as ``rng``, so each
rule is tested by calling it.

Back-off after failed checks uses *full jitter* (as the production issue asks): with
``base = poll_interval * 2^(n-1)`` (at most ``8 * poll_interval``) the delay is uniform in
``[0, base]``, which spreads a fleet's retries after a shared outage the most evenly. With
``jitter_s == 0`` nothing is random and the delay is exactly ``base``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

RETRY_AFTER_CAP_S = 3600.0
_MAX_DOUBLINGS = 3  # 2**3: the back-off stops growing at 8 * poll_interval
_COHORT_BUCKETS = 10_000_000  # cohorts are multiples of 1e-5 in [0, 100)

Action = Literal["install", "update", "none"]


@dataclass(frozen=True)
class Decision:
    """What to do with a candidate release, and why, in words fit for a log line."""

    action: Action
    reason: str


def decide(
    candidate: str,
    current: str | None,
    *,
    bad: Iterable[tuple[str, str]],
    candidate_sha256: str,
    cohort: float | None,
    rollout_percent: float | None,
    pins: Iterable[str] = (),
) -> Decision:
    """Decide whether to install or update to ``candidate``.

    ``current`` is None when nothing is installed: then the candidate is installed unless it
    is marked bad (a host with no agent takes the current release whatever the rollout).
    Otherwise the candidate must be strictly newer, not marked bad (same version *and*
    sha256), and admitted by the rollout (``cohort < percent``; no rollout admits all; a
    host without a cohort is admitted only at 100%). A candidate above any of ``pins`` is
    never taken, not even by an empty host. Versions must be valid PEP 440 versions
    (``InvalidVersion`` otherwise). "Newer" compares the public versions: a local part
    (``3.46.3+bea5943``, a native build's metadata) names a build, not a place in the
    order, so another build of the same public version is not an update (``install``
    takes one on purpose).
    """
    from packaging.version import InvalidVersion, Version  # lazily: the resident never decides

    wanted = Version(candidate)
    sha = candidate_sha256.lower()
    bad_reason = f"{candidate} (sha256 {sha[:8]}…) is marked bad"
    for pin in pins:  # launcher.controls: an operator's cap, before anything else
        if Version(wanted.public) > Version(Version(pin).public):  # a build's local part
            # names a build of that version, not a higher one
            return Decision("none", f"{candidate} is above the pin {pin}")
    if current is None:
        if is_bad(candidate, sha, bad):
            return Decision("none", bad_reason)
        return Decision("install", f"nothing installed: installing {candidate}")
    try:
        installed = Version(current)
    except InvalidVersion:
        # An installed build that cannot tell its version (garbage, or not our agent) is
        # replaced like an empty slot, unless the candidate is itself marked bad.
        if is_bad(candidate, sha, bad):
            return Decision("none", bad_reason)
        return Decision("install", f"installed version {current!r} is not a valid version: "
                                   f"installing {candidate}")
    if Version(wanted.public) <= Version(installed.public):
        return Decision("none", f"{candidate} is not newer than {current}")
    if is_bad(candidate, sha, bad):
        return Decision("none", bad_reason)
    if not admitted(cohort, rollout_percent):
        return Decision("none", _rollout_refusal(cohort, rollout_percent))
    return Decision("update", f"{candidate} is newer than {current}")


def is_bad(version: str, sha256: str, bad: Iterable[tuple[str, str]]) -> bool:
    """True when (version, sha256) is on the bad list; a rebuild with a new hash is not."""
    sha = sha256.lower()
    return any(_same_version(version, v) and sha == s.lower() for v, s in bad)


def admitted(cohort: float | None, rollout_percent: float | None) -> bool:
    """Whether the rollout admits a host; raising the percent only ever adds hosts."""
    if rollout_percent is None or rollout_percent >= 100:
        return True
    if cohort is None:
        return False
    return cohort < rollout_percent


def cohort(host_id: str, version: str) -> float:
    """This host's stable place in ``[0, 100)`` for a release: sha256 of ``host:version``."""
    import hashlib  # lazily: the resident uses this module for timing only

    digest = hashlib.sha256(f"{host_id}:{version}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % _COHORT_BUCKETS
    return bucket * 100 / _COHORT_BUCKETS


def first_poll_delay(poll_interval_s: float, jitter_s: float, rng: random.Random, *,
                     installed: bool = True) -> float:
    """Delay of the first poll after start; 0 without jitter.

    With an agent installed it is a random point of one whole regular period,
    ``uniform(0, poll_interval + uniform(0, jitter))``: a fleet restarted at once is then as
    spread out as one that has run for hours (a delay within ``jitter`` alone would send the
    whole fleet inside one minute, and the bunch would last many periods). With nothing
    installed only ``jitter`` applies: a host without an agent should not wait a period.
    """
    if jitter_s <= 0:
        return 0.0
    if not installed:
        return rng.uniform(0.0, jitter_s)
    return rng.uniform(0.0, poll_interval_s + rng.uniform(0.0, jitter_s))


def next_poll_delay(
    poll_interval_s: float,
    jitter_s: float,
    consecutive_failures: int,
    retry_after_s: float | None,
    rng: random.Random,
) -> float:
    """Seconds until the next check (see the module docstring for the back-off rule).

    A ``Retry-After`` from the server lengthens the delay, up to an hour; it never shortens
    it.
    """
    if consecutive_failures < 0:
        raise ValueError("consecutive_failures must be >= 0")
    if consecutive_failures == 0:
        delay = poll_interval_s + (rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0)
    else:
        base = backoff_base(poll_interval_s, consecutive_failures)
        delay = rng.uniform(0.0, base) if jitter_s > 0 else base
    if retry_after_s is not None:
        delay = max(delay, min(max(retry_after_s, 0.0), RETRY_AFTER_CAP_S))
    return delay


def backoff_base(poll_interval_s: float, consecutive_failures: int) -> float:
    """``poll_interval * 2^(n-1)``, at most ``8 * poll_interval``."""
    doublings = min(consecutive_failures - 1, _MAX_DOUBLINGS)
    return float(poll_interval_s * 2**doublings)


def crash_restart_delay(
    consecutive_crashes: int, base_s: float = 1.0, cap_s: float = 60.0
) -> float:
    """Delay before restarting a crashed child: 0, then base * 2^(n-1) capped (1, 2, 4 ... 60)."""
    if consecutive_crashes <= 0:
        return 0.0
    exponent = min(consecutive_crashes - 1, 64)
    return float(min(base_s * 2.0**exponent, cap_s))


def _same_version(a: str, b: str) -> bool:
    from packaging.version import InvalidVersion, Version

    if a == b:
        return True
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def _rollout_refusal(cohort_value: float | None, percent: float | None) -> str:
    if cohort_value is None:
        return f"rollout at {percent:g}% and this host has no cohort"
    return f"rollout at {percent:g}% does not include this host (cohort {cohort_value:.1f})"
