"""The trial judge, without processes: every run of probe answers up to a length, by rule."""

from __future__ import annotations

import itertools

import pytest

from launcher.journal import Build, Trial
from launcher.trial import HEALTH_GRACE_S, UNHEALTHY_PROBES, TrialJudge

URL = "http://127.0.0.1:1/healthz"
WINDOW = 2.0
TICK = 0.2


def fresh(run_time_s: float = 0.0, healthy_seen: bool = False) -> Trial:
    return Trial(build=Build("1.0.0", "a" * 64), started_at="2026-01-01T00:00:00Z",
                 run_time_s=run_time_s, healthy_seen=healthy_seen)


def drive(judge: TrialJudge, answers: list[bool], start_age: float = TICK) -> tuple[str, int]:
    """Observe ``answers`` one tick apart; (verdict kind, observations taken)."""
    for n, ok in enumerate(answers, 1):
        verdict = judge.observe(start_age + TICK * (n - 1), ok)
        if verdict.kind != "wait":
            return verdict.kind, n
    return "wait", len(answers)


def test_a_healthy_child_commits_at_the_end_of_its_window() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    kind, n = drive(judge, [True] * 20)
    assert (kind, n) == ("commit", 10)
    assert judge.record.healthy_seen and judge.record.run_time_s == pytest.approx(WINDOW)


def test_without_a_health_url_staying_up_is_enough() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=None)
    assert judge.observe(1.0, None).kind == "wait"
    assert judge.observe(WINDOW, None).kind == "commit"


def test_one_failed_probe_on_the_last_tick_is_not_a_verdict() -> None:
    """The window's end is judged like its middle: a short run of failures waits."""
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    kind, n = drive(judge, [True] * 9 + [False] + [True])
    assert (kind, n) == ("commit", 11)


def test_a_run_of_failures_at_the_end_fails_like_mid_window() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    kind, n = drive(judge, [True] * 9 + [False] * UNHEALTHY_PROBES)
    assert (kind, n) == ("fail", 9 + UNHEALTHY_PROBES)
    assert judge.ended is not None and "stopped answering" in judge.ended.reason


def test_never_answering_fails_at_the_end_of_the_window() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    kind, n = drive(judge, [False] * 20)
    assert (kind, n) == ("fail", 10)
    assert judge.ended is not None and "never answered" in judge.ended.reason


def test_a_resumed_trial_gives_the_restarted_child_its_whole_grace() -> None:
    """Healthy before the launcher restarted, 1.9 s of 2 s done: the new child's failed
    probes do not count until it answers or its grace (here the whole window) is over."""
    judge = TrialJudge(fresh(run_time_s=1.9, healthy_seen=True), WINDOW, health_url=URL)
    judge.child_started()
    grace = min(HEALTH_GRACE_S, WINDOW)
    slow_start = int(grace / TICK) - 1  # probes refused while it starts
    kind, n = drive(judge, [False] * slow_start + [True])
    assert (kind, n) == ("commit", slow_start + 1)


def test_a_resumed_child_that_never_answers_fails_once_its_grace_is_over() -> None:
    judge = TrialJudge(fresh(run_time_s=1.9, healthy_seen=True), WINDOW, health_url=URL)
    judge.child_started()
    kind, n = drive(judge, [False] * 40)
    assert kind == "fail"
    assert n * TICK >= min(HEALTH_GRACE_S, WINDOW)


def test_an_exit_fails_the_trial_and_the_verdict_is_final() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    judge.observe(0.5, True)
    verdict = judge.child_exited("exited 3", 0.7)
    assert verdict.kind == "fail" and "exited 3 after 0.7s" in verdict.reason
    assert judge.observe(5.0, True) is verdict


def test_every_answer_sequence_follows_the_rules() -> None:
    """Exhaustive over every sequence of up to 13 answers, one tick apart."""
    for length in range(1, 14):
        for answers in itertools.product([True, False], repeat=length):
            check_rules(list(answers))


def check_rules(answers: list[bool]) -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=URL)
    kind, n = drive(judge, answers)
    seen = answers[:n]
    streak = 0
    longest_after_answer = 0
    answered = False
    for ok in seen:
        answered = answered or ok
        streak = 0 if ok else streak + (1 if answered else 0)
        longest_after_answer = max(longest_after_answer, streak)
    ages = [TICK * (i + 1) for i in range(n)]
    what = f"{answers} -> {kind} after {n}"
    if kind == "commit":
        assert seen[-1] is True, f"commits only on a healthy answer: {what}"
        assert ages[-1] >= WINDOW - 1e-9, f"never before the window is over: {what}"
        assert longest_after_answer < UNHEALTHY_PROBES, what
    elif kind == "fail":
        assert not seen[-1], what
        assert longest_after_answer >= UNHEALTHY_PROBES or (
            not answered and ages[-1] >= WINDOW - 1e-9), what
    else:
        assert n == len(answers), what
        assert ages[-1] < WINDOW - 1e-9 or (answered and 0 < streak < UNHEALTHY_PROBES), what


# ---- --ready notify: the window starts at READY=1, WATCHDOG=1 must keep coming ------------


def notify_judge(watchdog_s: float | None = None, url: str | None = None) -> TrialJudge:
    return TrialJudge(fresh(), WINDOW, health_url=url, ready="notify", watchdog_s=watchdog_s)


def test_notify_the_window_starts_at_ready() -> None:
    judge = notify_judge()
    assert judge.observe(1.0, None).kind == "wait"  # not ready yet: no run time counts
    assert judge.record.run_time_s == 0.0
    judge.ready(1.5)
    assert judge.observe(1.5 + WINDOW - TICK, None).kind == "wait"
    assert judge.observe(1.5 + WINDOW, None).kind == "commit"
    assert judge.record.run_time_s == pytest.approx(WINDOW)


def test_notify_no_ready_within_the_ready_timeout_fails() -> None:
    """The deadline for READY=1 is its own, not the (short) window's."""
    judge = notify_judge()
    assert judge.observe(WINDOW * 2, None).kind == "wait"
    assert judge.observe(HEALTH_GRACE_S - TICK, None).kind == "wait"
    verdict = judge.observe(HEALTH_GRACE_S, None)
    assert verdict.kind == "fail" and "sent no READY=1" in verdict.reason


def test_notify_a_late_ready_is_no_rescue_once_failed() -> None:
    judge = notify_judge()
    assert judge.observe(HEALTH_GRACE_S, None).kind == "fail"
    judge.ready(HEALTH_GRACE_S + 0.1)
    assert judge.observe(WINDOW * 3, None).kind == "fail"


def test_notify_probes_before_ready_do_not_count() -> None:
    """A health URL on a shared socket may be answered by the old agent: ignored until
    READY; from READY on, the usual rules."""
    judge = notify_judge(url=URL)
    assert judge.observe(0.2, True).kind == "wait"
    assert not judge.record.healthy_seen
    judge.ready(0.4)
    kind, n = drive(judge, [True] * 20, start_age=0.4 + TICK)
    assert (kind, n) == ("commit", 10)


def test_notify_unhealthy_after_ready_fails_as_before() -> None:
    judge = notify_judge(url=URL)
    judge.ready(0.0)
    kind, n = drive(judge, [True] * 3 + [False] * UNHEALTHY_PROBES)
    assert (kind, n) == ("fail", 3 + UNHEALTHY_PROBES)


@pytest.mark.parametrize("last_ping", [0.0, 0.5, 1.0])
def test_notify_stopped_watchdog_pings_fail(last_ping: float) -> None:
    judge = notify_judge(watchdog_s=0.5)
    judge.ready(0.0)
    for t in [x / 10 for x in range(0, int(last_ping * 10) + 1)]:
        judge.watchdog(t)
        assert judge.observe(t, None).kind == "wait"
    assert judge.observe(last_ping + 0.5, None).kind == "wait"  # exactly the limit: not yet
    verdict = judge.observe(last_ping + 0.6, None)
    assert verdict.kind == "fail" and "stopped its WATCHDOG=1 pings" in verdict.reason


def test_notify_steady_pings_commit() -> None:
    judge = notify_judge(watchdog_s=0.5)
    judge.ready(0.0)
    verdict = None
    for n in range(1, 30):
        judge.watchdog(n * TICK)
        verdict = judge.observe(n * TICK, None)
        if verdict.kind != "wait":
            break
    assert verdict is not None and verdict.kind == "commit"


def test_notify_a_child_that_never_pings_is_judged_without_the_watchdog() -> None:
    judge = notify_judge(watchdog_s=0.5)
    judge.ready(0.0)
    assert judge.observe(WINDOW, None).kind == "commit"


def test_notify_a_restarted_child_must_be_ready_again() -> None:
    judge = notify_judge(watchdog_s=0.5)
    judge.ready(0.0)
    judge.watchdog(0.5)
    assert judge.observe(1.0, None).kind == "wait"
    judge.child_started()  # a new run: no READY, no pings carried over
    assert judge.ready_at is None and judge.pinged_at is None
    assert judge.observe(0.2, None).kind == "wait"
    assert judge.record.run_time_s == pytest.approx(1.0)  # the first run's time is kept
    judge.ready(0.3)
    assert judge.observe(0.3 + WINDOW - 1.0 - TICK, None).kind == "wait"
    assert judge.observe(0.3 + WINDOW - 0.9, None).kind == "commit"


def test_notify_an_exit_counts_window_time_from_ready() -> None:
    judge = notify_judge()
    judge.ready(1.0)
    verdict = judge.child_exited("exited 1", 1.5)
    assert verdict.kind == "fail" and judge.record.run_time_s == pytest.approx(0.5)


def test_health_mode_ignores_ready_and_pings() -> None:
    judge = TrialJudge(fresh(), WINDOW, health_url=None, watchdog_s=0.5)
    judge.watchdog(0.0)
    assert judge.observe(WINDOW, None).kind == "commit"
