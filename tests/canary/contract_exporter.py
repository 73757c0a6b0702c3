"""A stand-in exporter of the metric contract the predictor exposes once branch `core` (issue
13.1) is merged: `kbundle_requests_total{model,revision,protocol,outcome}` and the histogram
`kbundle_request_duration_seconds{model,revision,protocol}`. It simulates two revisions' traffic
so the PromQL of `analyze --prometheus` is checked against the contract names on a real
Prometheus before the real predictor has them. Usage: contract_exporter.py PORT SCENARIO
(SCENARIO: cancels = the canary's clients cancel 30% but it never fails; slow = canary 3x slower)."""

from __future__ import annotations

import sys
import time

import numpy as np
from prometheus_client import Counter, Histogram, start_http_server

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUESTS = Counter("kbundle_requests", "V2 requests", ["model", "revision", "protocol", "outcome"])
DURATION = Histogram(
    "kbundle_request_duration_seconds",
    "V2 latency",
    ["model", "revision", "protocol"],
    buckets=BUCKETS,
)


def main(port: int, scenario: str) -> None:
    start_http_server(port, addr="127.0.0.1")
    rng = np.random.default_rng(0)
    revisions = {"m-predictor-00001": (0.008, 0.0), "m-predictor-00002": (0.008, 0.3)}
    if scenario == "slow":
        revisions = {"m-predictor-00001": (0.008, 0.0), "m-predictor-00002": (0.024, 0.0)}
    while True:
        for revision, (scale, cancel_p) in revisions.items():
            outcome = "cancelled" if rng.random() < cancel_p else "ok"
            REQUESTS.labels("m", revision, "grpc", outcome).inc()
            if outcome == "ok":
                DURATION.labels("m", revision, "grpc").observe(rng.lognormal(np.log(scale), 0.3))
        time.sleep(0.01)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
