"""Canary analysis: the latest revision against the previous rolled-out one, over one window.

Roll back when the canary is clearly worse (error rate above the previous one's by more than the
allowed margin, or p99 beyond the allowed ratio); hold while it has too few requests to judge;
promote otherwise. Pure function of the two windowed summaries, so it is testable without servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "roll back"


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 50
    max_error_rate_increase: float = 0.01  # absolute: 0.01 = one percentage point
    max_p99_ratio: float = 1.5
    max_p50_ratio: float = 1.5


@dataclass(frozen=True)
class Verdict:
    action: str
    reasons: list[str] = field(default_factory=list)


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return new / old


def decide(latest: dict, previous: dict, limits: Thresholds) -> Verdict:
    """`latest` / `previous`: windowed summaries {requests, errors, error_rate, p50_ms, p99_ms}."""
    reasons = []
    increase = latest["error_rate"] - previous["error_rate"]
    if latest["requests"] and increase > limits.max_error_rate_increase:
        reasons.append(
            f"error rate {latest['error_rate']:.2%} vs {previous['error_rate']:.2%} "
            f"(+{increase:.2%} > allowed +{limits.max_error_rate_increase:.2%})"
        )
    for key, limit in (("p99_ms", limits.max_p99_ratio), ("p50_ms", limits.max_p50_ratio)):
        ratio = _ratio(latest[key], previous[key])
        if ratio is not None and ratio > limit and previous["requests"] >= limits.min_requests:
            reasons.append(
                f"{key[:3]} {latest[key]:.1f} ms vs {previous[key]:.1f} ms (x{ratio:.2f} > x{limit:.2f})"
            )
    if reasons and latest["requests"] >= min(limits.min_requests, 10):
        return Verdict(ROLLBACK, reasons)
    if latest["requests"] < limits.min_requests:
        return Verdict(
            HOLD,
            [
                f"only {latest['requests']} requests on the canary in the window "
                f"(need {limits.min_requests})"
            ],
        )
    return Verdict(
        PROMOTE,
        [
            f"error rate {latest['error_rate']:.2%} vs {previous['error_rate']:.2%}, "
            f"p99 {_fmt(latest['p99_ms'])} vs {_fmt(previous['p99_ms'])} ms: within limits"
        ],
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
