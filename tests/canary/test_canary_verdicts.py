"""Verdicts that do not flip on noise: the statistics, on simulated windows (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from kbundle.local.analysis import (
    HOLD,
    PROMOTE,
    ROLLBACK,
    Thresholds,
    decide,
    fisher_greater,
    quantile,
)
from kbundle.local.metrics import RequestStats, cumulative_buckets


def _window(rng, n: int, error_p: float, scale_s: float, cold: int = 0) -> dict:
    lat = rng.lognormal(np.log(scale_s), 0.35, n)
    lat[:cold] = 0.06  # a cold request or two, as the x6.37 came from
    errors = int(rng.binomial(n, error_p))
    return {"requests": n, "errors": errors, "buckets": cumulative_buckets(lat)}


def test_fisher_matches_the_tea_tasting_table():
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert fisher_greater(0, 100, 0, 100) == 1.0


def test_quantile_interpolates_like_histogram_quantile():
    buckets = [(0.1, 50), (0.2, 100), (float("inf"), 100)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)


def test_two_identical_revisions_never_roll_back():
    """300 analyses of two equally fast, equally (rarely) failing revisions with 60-400 requests
    each, including a cold request in the canary's window: never ROLL BACK."""
    rng = np.random.default_rng(7)
    seen = {PROMOTE: 0, HOLD: 0, ROLLBACK: 0}
    for _ in range(300):
        n_new, n_old = rng.integers(60, 400, 2)
        new = _window(rng, int(n_new), 0.005, 0.009, cold=int(rng.integers(0, 2)))
        old = _window(rng, int(n_old), 0.005, 0.009)
        verdict = decide(new, old, Thresholds())
        seen[verdict.action] += 1
        assert verdict.action != ROLLBACK, verdict.reasons
    assert seen[PROMOTE] > 250, seen  # and mostly it does promote


@pytest.mark.parametrize(
    "new_args,reason",
    [((0.06, 0.009), "error rate"), ((0.0, 0.030), "p99")],
    ids=["5xx share", "3x slower"],
)
def test_a_real_regression_is_caught(new_args, reason):
    rng = np.random.default_rng(1)
    caught = 0
    for _ in range(20):
        new = _window(rng, 300, *new_args)
        old = _window(rng, 300, 0.0, 0.009)
        verdict = decide(new, old, Thresholds())
        caught += verdict.action == ROLLBACK and any(reason in r for r in verdict.reasons)
    assert caught == 20


def test_too_few_requests_hold_whatever_the_figures():
    rng = np.random.default_rng(2)
    verdict = decide(_window(rng, 30, 0.5, 0.1), _window(rng, 300, 0.0, 0.009), Thresholds())
    assert verdict.action == HOLD and "30 requests" in verdict.reasons[0]


def test_ratios_are_compared_unrounded_and_the_floor_applies():
    def window(counts):
        bounds = (0.001, 0.002, 0.004, float("inf"))
        return {"requests": 100, "errors": 0, "buckets": list(zip(bounds, counts, strict=True))}

    old, fast_but_2x = window((0, 100, 100, 100)), window((0, 0, 100, 100))
    verdict = decide(fast_but_2x, old, Thresholds())  # 2x, but p99 under the 5 ms floor
    assert verdict.action == PROMOTE and "floor" in " ".join(verdict.reasons)
    same = decide(old, old, Thresholds(max_p99_ratio=1.0, max_p50_ratio=1.0))
    assert same.action == PROMOTE  # x1.000 is not > x1


def test_local_stats_leave_the_warm_up_out():
    stats = RequestStats(warmup=5)
    for _ in range(5):
        stats.record(1.0, error=True)  # cold, failing first requests
    for _ in range(100):
        stats.record(0.01, error=False)
    window = stats.summary(window_s=60)
    assert (window.requests, window.errors) == (100, 0) and window.p99_ms == pytest.approx(10)
    assert stats.summary().requests == 105
