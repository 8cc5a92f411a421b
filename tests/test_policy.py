"""Pure decisions: newer?, bad?, in the rollout?, and the delays between checks."""

from __future__ import annotations

import random

import pytest

from launcher.policy import (
    Decision,
    admitted,
    cohort,
    crash_restart_delay,
    decide,
    first_poll_delay,
    next_poll_delay,
)

SHA = "abcd1234" + "0" * 56
OTHER_SHA = "ef" * 32


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def call(
    *,
    candidate: str = "0.1.2",
    current: str | None = "0.1.1",
    bad: list[tuple[str, str]] | None = None,
    sha: str = SHA,
    host_cohort: float | None = 50.0,
    percent: float | None = None,
) -> Decision:
    return decide(
        candidate,
        current,
        bad=bad or [],
        candidate_sha256=sha,
        cohort=host_cohort,
        rollout_percent=percent,
    )


def test_newer_version_updates() -> None:
    assert call() == Decision("update", "0.1.2 is newer than 0.1.1")


def test_equal_version_does_nothing() -> None:
    assert call(current="0.1.2") == Decision("none", "0.1.2 is not newer than 0.1.2")


def test_lower_version_never_installs() -> None:
    assert call(candidate="0.1.1", current="0.1.2").action == "none"
    assert call(candidate="0.9.0", current="0.10.0").action == "none"  # not string order


def test_prerelease_orders_before_release() -> None:
    assert call(candidate="1.0.0rc1", current="1.0.0").action == "none"
    assert call(candidate="1.0.0", current="1.0.0rc1").action == "update"


def test_nothing_installed_installs_whatever_the_rollout() -> None:
    decision = call(current=None, percent=0.0)
    assert decision.action == "install"


def test_bad_version_and_hash_is_blocked() -> None:
    decision = call(bad=[("0.1.2", SHA)])
    assert decision == Decision("none", "0.1.2 (sha256 abcd1234…) is marked bad")
    assert call(current=None, bad=[("0.1.2", SHA)]).action == "none"


def test_bad_list_matches_case_insensitively_and_by_version_value() -> None:
    assert call(bad=[("0.1.2", SHA.upper())]).action == "none"
    assert call(bad=[("0.1.02", SHA)]).action == "none"


def test_rebuild_with_new_hash_is_not_blocked() -> None:
    assert call(sha=OTHER_SHA, bad=[("0.1.2", SHA)]).action == "update"


def test_other_bad_versions_do_not_block() -> None:
    assert call(bad=[("0.1.3", SHA), ("not a version", SHA)]).action == "update"


def test_rollout_excludes_hosts_above_the_percent() -> None:
    decision = call(host_cohort=57.3, percent=10)
    assert decision == Decision("none", "rollout at 10% does not include this host (cohort 57.3)")
    assert call(host_cohort=9.99, percent=10).action == "update"
    assert call(host_cohort=0.0, percent=0).action == "none"
    assert call(host_cohort=99.99, percent=100).action == "update"
    assert call(host_cohort=None, percent=50).action == "none"
    assert call(host_cohort=None, percent=None).action == "update"


def test_cohort_is_stable_and_in_range() -> None:
    assert cohort("host-a", "0.1.2") == cohort("host-a", "0.1.2")
    values = [cohort(f"host-{i}", "0.1.2") for i in range(2000)]
    assert all(0 <= value < 100 for value in values)
    # Spread roughly evenly: about a tenth of hosts below 10.
    assert 120 < sum(value < 10 for value in values) < 280
    assert cohort("host-a", "0.1.2") != cohort("host-a", "0.1.3")


def test_raising_the_percent_only_adds_hosts() -> None:
    hosts = [f"host-{i}" for i in range(500)]
    previous: set[str] = set()
    for percent in (0, 1, 10, 20, 50, 99.5, 100):
        now_in = {h for h in hosts if admitted(cohort(h, "0.2.0"), percent)}
        assert previous <= now_in
        previous = now_in
    assert previous == set(hosts)


def test_first_poll_delay_spreads_over_a_whole_period() -> None:
    """Installed: anywhere in one period (interval + jitter); empty: within the jitter."""
    rng = seeded(1)
    assert first_poll_delay(300, 0, rng) == 0
    delays = [first_poll_delay(300, 30, rng) for _ in range(500)]
    assert all(0 <= d <= 330 for d in delays)
    assert min(delays) < 30 and max(delays) > 270
    empty = [first_poll_delay(300, 30, rng, installed=False) for _ in range(200)]
    assert all(0 <= d <= 30 for d in empty)


def test_success_delay_is_interval_plus_jitter() -> None:
    rng = seeded(2)
    delays = [next_poll_delay(300, 30, 0, None, rng) for _ in range(200)]
    assert all(300 <= d <= 330 for d in delays)
    assert next_poll_delay(300, 0, 0, None, rng) == 300


def test_backoff_sequence_and_cap_without_jitter() -> None:
    rng = seeded(3)
    sequence = [next_poll_delay(10, 0, n, None, rng) for n in range(1, 8)]
    assert sequence == [10, 20, 40, 80, 80, 80, 80]
    assert next_poll_delay(10, 0, 10_000, None, rng) == 80


def test_jitter_zero_draws_nothing() -> None:
    class NoRandom(random.Random):
        def uniform(self, a: float, b: float) -> float:
            raise AssertionError("random draw with jitter 0")

    rng = NoRandom()
    assert first_poll_delay(5, 0, rng) == 0
    for failures in range(5):
        next_poll_delay(5, 0, failures, 7, rng)


def test_backoff_with_full_jitter_spreads_over_zero_to_base() -> None:
    rng = seeded(4)
    for failures, base in [(1, 10), (2, 20), (3, 40), (4, 80), (9, 80)]:
        delays = [next_poll_delay(10, 3, failures, None, rng) for _ in range(200)]
        assert all(0 <= d <= base for d in delays)
        assert min(delays) < base / 4 and max(delays) > base * 3 / 4  # the whole range


def test_retry_after_lengthens_but_is_capped_at_an_hour() -> None:
    rng = seeded(5)
    assert next_poll_delay(10, 0, 1, 120, rng) == 120
    assert next_poll_delay(10, 0, 1, 5, rng) == 10  # never shortens
    assert next_poll_delay(10, 0, 1, 86_400, rng) == 3600
    assert next_poll_delay(10, 0, 0, -5, rng) == 10


def test_negative_failures_are_a_bug() -> None:
    with pytest.raises(ValueError, match="consecutive_failures"):
        next_poll_delay(10, 0, -1, None, seeded(0))


def test_crash_restart_delay() -> None:
    assert [crash_restart_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert crash_restart_delay(10_000) == 60
    assert crash_restart_delay(3, base_s=0.5, cap_s=1.5) == 1.5
