"""Request metrics by model, revision, protocol and outcome: one definition for both transports.

Counters live in prometheus-client's default registry, which kserve already serves on /metrics.
The revision label is the Knative revision (env K_REVISION), else KBUNDLE_REVISION (Standard
mode or `kbundle up`), else "". Label children are cached, so a request costs dict look-ups.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import Counter, Gauge, Histogram

from kbundle.status import OUTCOMES

REQUESTS = Counter(
    "kbundle_requests",
    "V2 inference requests by outcome (ok|client_error|server_error|cancelled|dropped).",
    ["model", "revision", "protocol", "outcome"],
)
DURATION = Histogram(
    "kbundle_request_duration_seconds",
    "Time from a request's arrival in the request core to its answer.",
    ["model", "revision", "protocol"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
    ),  # fmt: skip
)
DROPPED = Counter(
    "kbundle_requests_dropped",
    "Requests refused by admission (queue_full, deadline, disconnected, too_large).",
    ["model", "reason"],
)
LOOP_LAG = Histogram(
    "kbundle_event_loop_lag_seconds",
    "How late the serving event loop ran a timer (sampled every 100 ms): while the loop is late, "
    "no request is read, refused or answered.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CPU_BUDGET = Gauge("kbundle_cpu_budget", "CPUs this process may use (affinity and cgroup quota).")

UNKNOWN_MODEL = "_unknown"  # the label for requests naming a model that is not served
PROTOCOLS = ("rest", "grpc")


@functools.cache
def revision() -> str:
    return os.environ.get("K_REVISION") or os.environ.get("KBUNDLE_REVISION") or ""


@functools.cache
def _requests(model: str, protocol: str, outcome: str):
    return REQUESTS.labels(model=model, revision=revision(), protocol=protocol, outcome=outcome)


@functools.cache
def _duration(model: str, protocol: str):
    return DURATION.labels(model=model, revision=revision(), protocol=protocol)


def prime(model: str) -> None:
    """Every series a served model's requests can land in, at zero from the start. Prometheus's
    increase() counts only what a series gained between two scrapes, so a series born with its
    first request would lose what it counted before its first scrape: a burst of server errors
    inside one scrape interval would read as none in a canary analysis."""
    for protocol in PROTOCOLS:
        _duration(model, protocol)
        for outcome in OUTCOMES:
            _requests(model, protocol, outcome)


def record(model: str, protocol: str, outcome: str, seconds: float) -> None:
    """The one place a served request is counted (called by the request core only)."""
    _requests(model, protocol, outcome).inc()
    _duration(model, protocol).observe(seconds)


def count_dropped(model: str, reason: str) -> None:
    DROPPED.labels(model=model, reason=reason).inc()
