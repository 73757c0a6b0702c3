"""Canary analysis: the canary revision against the previous one, on evidence that does not flip.

One pure function of two windowed summaries (from `kbundle up` or from Prometheus), so it is
testable without servers. The rules, in order:
- HOLD until both revisions have `min_requests` in the window (warm-up already left out by the
  source): no verdict but hold rests on a handful of requests;
- ROLL BACK on errors when the canary's error rate is above the previous one's by more than the
  allowed margin AND a one-sided Fisher exact test says so with `confidence` (default 99%);
- ROLL BACK on latency when p50 or p99 is beyond the allowed ratio, the canary's quantile is above
  the absolute floor (a 0.3 ms vs 0.1 ms p99 is not a regression), and a bootstrap over the
  latency histograms puts the ratio beyond the limit with `confidence`;
- a limit crossed without that confidence HOLDs (more traffic decides); otherwise PROMOTE.
All comparisons use unrounded figures; the messages round only for printing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "roll back"
Buckets = Sequence[tuple[float, float]]  # (upper bound in seconds, cumulative count), +Inf last
BOOTSTRAP_ROUNDS = 400


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 50
    max_error_rate_increase: float = 0.01  # absolute: 0.01 = one percentage point
    max_p99_ratio: float = 1.5
    max_p50_ratio: float = 1.5
    latency_floor_ms: float = 5.0  # a canary quantile under this never counts as slow
    confidence: float = 0.99


@dataclass(frozen=True)
class Verdict:
    action: str
    reasons: list[str] = field(default_factory=list)


def quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus `histogram_quantile` on cumulative buckets (linear inside a bucket), seconds."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            inside = count - prev_count
            return prev_bound + (bound - prev_bound) * (
                (rank - prev_count) / inside if inside else 1
            )
        prev_bound, prev_count = bound, count
    return prev_bound


def fisher_greater(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value that A's error share is greater than B's."""
    total_err, total = errors_a + errors_b, n_a + n_b
    if total_err == 0 or n_a == 0 or n_b == 0:
        return 1.0

    def log_comb(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    denom = log_comb(total, n_a)
    top = min(total_err, n_a)
    low = max(errors_a, total_err - n_b)
    p = sum(
        math.exp(log_comb(total_err, x) + log_comb(total - total_err, n_a - x) - denom)
        for x in range(low, top + 1)
    )
    return min(1.0, p)


def bootstrap_ratio_confidence(
    q: float, canary: Buckets, previous: Buckets, limit: float, floor_s: float
) -> float:
    """Share of bootstrap resamples (multinomial over each histogram's buckets) in which the
    canary's q-quantile is above `floor_s` and more than `limit` times the previous one's."""
    rng = np.random.default_rng(0)  # deterministic: the same figures give the same verdict
    bounds = [b for b, _ in canary]
    draws = [_resample(rng, h) for h in (canary, previous)]
    hits = 0
    for new, old in zip(*draws, strict=True):
        qn = quantile(q, list(zip(bounds, new, strict=True)))
        qo = quantile(q, list(zip(bounds, old, strict=True)))
        if qn is not None and qo and qn > floor_s and qn / qo > limit:
            hits += 1
    return hits / BOOTSTRAP_ROUNDS


def _resample(rng: np.random.Generator, buckets: Buckets) -> np.ndarray:
    cumulative = np.array([c for _, c in buckets], dtype=np.float64)
    counts = np.maximum(np.diff(cumulative, prepend=0.0), 0.0)
    n = int(round(counts.sum()))
    draws = rng.multinomial(n, counts / counts.sum(), size=BOOTSTRAP_ROUNDS)
    return np.cumsum(draws, axis=1)


def decide(latest: dict, previous: dict, limits: Thresholds) -> Verdict:
    """`latest` / `previous`: {requests, errors, buckets} (buckets as in `quantile`)."""
    short = [
        f"{name} has {int(w['requests'])} requests in the window (need {limits.min_requests})"
        for name, w in (("canary", latest), ("previous", previous))
        if w["requests"] < limits.min_requests
    ]
    if short:
        return Verdict(HOLD, short)
    bad, unsure, fine = [], [], []
    for finding in (_errors(latest, previous, limits), *_latency(latest, previous, limits)):
        kind, text = finding
        {"bad": bad, "unsure": unsure, "fine": fine}[kind].append(text)
    if bad:
        return Verdict(ROLLBACK, bad)
    if unsure:
        return Verdict(HOLD, unsure)
    return Verdict(PROMOTE, fine)


def _errors(latest: dict, previous: dict, limits: Thresholds) -> tuple[str, str]:
    rate_n = latest["errors"] / latest["requests"]
    rate_o = previous["errors"] / previous["requests"]
    increase = rate_n - rate_o
    p = fisher_greater(
        int(latest["errors"]),
        int(latest["requests"]),
        int(previous["errors"]),
        int(previous["requests"]),
    )
    text = (
        f"error rate {rate_n:.2%} vs {rate_o:.2%} (+{increase:.2%}, allowed "
        f"+{limits.max_error_rate_increase:.2%}; Fisher confidence {1 - p:.1%})"
    )
    if increase > limits.max_error_rate_increase:
        return ("bad" if 1 - p >= limits.confidence else "unsure", text)
    return "fine", text


def _latency(latest: dict, previous: dict, limits: Thresholds) -> list[tuple[str, str]]:
    out = []
    floor_s = limits.latency_floor_ms / 1000.0
    for q, limit in ((0.99, limits.max_p99_ratio), (0.5, limits.max_p50_ratio)):
        new, old = quantile(q, latest["buckets"]), quantile(q, previous["buckets"])
        label = f"p{int(q * 100)}"
        if new is None or old is None or old <= 0:
            out.append(("fine", f"{label}: no latency histogram to compare"))
            continue
        ratio = new / old
        text = (
            f"{label} {new * 1000:.2f} ms vs {old * 1000:.2f} ms (x{ratio:.3f}, allowed x{limit:g}"
        )
        if ratio <= limit or new <= floor_s:
            why = "" if ratio <= limit else f"; under the {limits.latency_floor_ms:g} ms floor"
            out.append(("fine", text + why + ")"))
            continue
        conf = bootstrap_ratio_confidence(q, latest["buckets"], previous["buckets"], limit, floor_s)
        kind = "bad" if conf >= limits.confidence else "unsure"
        out.append((kind, text + f"; bootstrap confidence {conf:.1%})"))
    return out
