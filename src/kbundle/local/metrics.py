"""Per-revision request counts, errors and latency, as the ingress sees them.

An error is what the revision is to blame for: HTTP 5xx, or a gRPC status other than OK and the
client-side ones (INVALID_ARGUMENT, NOT_FOUND, ...). A 4xx is the client's fault and does not
count against a canary. Recent samples stay in a bounded ring so windowed figures (for
`kbundle canary analyze`) cost no more memory however long `kbundle up` runs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

RING = 20000


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 5),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


class RequestStats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self._ring: deque[tuple[float, float, bool]] = deque(maxlen=RING)

    def record(self, latency_s: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self._ring.append((time.time(), latency_s, error))

    def summary(self, window_s: float | None = None) -> Summary:
        """Totals when `window_s` is None; else the requests that finished in the last window."""
        if window_s is None:
            samples = list(self._ring)
            requests, errors = self.requests, self.errors
        else:
            since = time.time() - window_s
            samples = [s for s in self._ring if s[0] >= since]
            requests, errors = len(samples), sum(1 for s in samples if s[2])
        latencies = np.array([s[1] for s in samples], dtype=np.float64) * 1000.0
        p50 = float(np.percentile(latencies, 50)) if latencies.size else None
        p99 = float(np.percentile(latencies, 99)) if latencies.size else None
        return Summary(requests, errors, errors / requests if requests else 0.0, p50, p99)
