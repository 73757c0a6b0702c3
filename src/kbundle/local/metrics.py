"""Per-revision request counts, errors and latency, as the ingress sees them.

An error is what the revision is to blame for: HTTP 5xx, or a gRPC status other than OK and the
client-side ones (INVALID_ARGUMENT, NOT_FOUND, ...). A 4xx is the client's fault and does not
count against a canary. Recent samples stay in a bounded ring so windowed figures (for
`kbundle canary analyze`) cost no more memory however long `kbundle up` runs; a revision's first
`WARMUP_REQUESTS` (cold caches, lazy loads) are kept out of the windowed figures.

The ingress plays Knative's queue-proxy here, so it also exposes the queue-proxy's per-revision
metrics (`revision_app_request_count`, `revision_app_request_latencies` in ms) for Prometheus.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

RING = 20000
WARMUP_REQUESTS = 10
# Geometric, x1.25 from 0.5 ms to ~30 s: fine enough that p99 ratios are not bucket artefacts.
LATENCY_BUCKETS_S = tuple(0.0005 * 1.25**k for k in range(50))


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None
    buckets: tuple[tuple[float, int], ...] = ()  # (upper bound s, cumulative), +Inf last

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "buckets": [[_bound(b), c] for b, c in self.buckets],
        }


def _bound(value: float) -> float | str:
    return "+Inf" if value == float("inf") else value


def cumulative_buckets(latencies_s: np.ndarray) -> tuple[tuple[float, int], ...]:
    bounds = np.array(LATENCY_BUCKETS_S)
    counts = np.searchsorted(np.sort(latencies_s), bounds, side="right")
    return (*zip(LATENCY_BUCKETS_S, counts.tolist(), strict=True), (float("inf"), latencies_s.size))


class RequestStats:
    def __init__(self, warmup: int = WARMUP_REQUESTS) -> None:
        self.requests = 0
        self.errors = 0
        self.warmup = warmup
        self._ring: deque[tuple[float, float, bool]] = deque(maxlen=RING)
        self._counts = {"2xx": 0, "5xx": 0}
        self._hist = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)
        self._sum_ms = 0.0

    def record(self, latency_s: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self._counts["5xx" if error else "2xx"] += 1
        self._hist[np.searchsorted(LATENCY_BUCKETS_S, latency_s)] += 1
        self._sum_ms += latency_s * 1000.0
        if self.requests > self.warmup:
            self._ring.append((time.time(), latency_s, error))

    def summary(self, window_s: float | None = None) -> Summary:
        """Totals when `window_s` is None; else the requests (past warm-up) of the last window."""
        if window_s is None:
            samples = list(self._ring)
            requests, errors = self.requests, self.errors
        else:
            since = time.time() - window_s
            samples = [s for s in self._ring if s[0] >= since]
            requests, errors = len(samples), sum(1 for s in samples if s[2])
        latencies = np.array([s[1] for s in samples], dtype=np.float64)
        p50 = float(np.percentile(latencies, 50)) * 1000 if latencies.size else None
        p99 = float(np.percentile(latencies, 99)) * 1000 if latencies.size else None
        rate = errors / requests if requests else 0.0
        return Summary(requests, errors, rate, p50, p99, cumulative_buckets(latencies))

    def exposition(self, labels: dict[str, str]) -> tuple[list[str], list[str]]:
        """Queue-proxy-shaped Prometheus text lines for this revision: (count lines, latency
        lines), kept apart because the text format wants each family's lines together."""
        base = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        counts = []
        for cls, count in self._counts.items():
            code = "500" if cls == "5xx" else "200"
            tail = f'{base},response_code="{code}",response_code_class="{cls}"'
            counts.append(f"revision_app_request_count{{{tail}}} {count}")
        out = []
        cumulative = np.cumsum(self._hist)
        for bound, count in zip(LATENCY_BUCKETS_S, cumulative.tolist(), strict=False):
            out.append(
                f'revision_app_request_latencies_bucket{{{base},le="{bound * 1000:.6g}"}} {count}'
            )
        out.append(f'revision_app_request_latencies_bucket{{{base},le="+Inf"}} {self.requests}')
        out.append(f"revision_app_request_latencies_sum{{{base}}} {self._sum_ms}")
        out.append(f"revision_app_request_latencies_count{{{base}}} {self.requests}")
        return counts, out


def exposition(revisions: list[tuple[RequestStats, dict[str, str]]]) -> str:
    """The whole /metrics text for a set of revisions (stats, labels)."""
    parts = [stats.exposition(labels) for stats, labels in revisions]
    lines = [
        "# HELP revision_app_request_count The number of requests that are routed to user-container",
        "# TYPE revision_app_request_count counter",
        *(line for counts, _ in parts for line in counts),
        "# HELP revision_app_request_latencies The response time in millisecond",
        "# TYPE revision_app_request_latencies histogram",
        *(line for _, latencies in parts for line in latencies),
    ]
    return "\n".join(lines) + "\n"
