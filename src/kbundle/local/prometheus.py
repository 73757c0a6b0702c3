"""Canary evidence from a Prometheus server (HTTP API `/api/v1/query`, plain stdlib HTTP).

Two metric sources, tried in order:
- kbundle's own: `kbundle_requests_total{revision,outcome}` (errors = outcome "server_error",
  cancels not counted) and `kbundle_request_duration_seconds_bucket{revision,le}` (seconds);
- Knative's queue-proxy, for predictors that are not ours: `revision_app_request_count
  {revision_name,response_code_class}` (errors = 5xx) and `revision_app_request_latencies_bucket`
  (milliseconds).
Both are selected by the labels the PodMonitor gives (`isvc`, `namespace`, `component`). Each
revision's window starts after its warm-up (first seen + `warmup_s`) when it appeared inside the
window. Every failure is a `PromError` with a one-line message; nothing here edits anything.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

STEP_S = 1  # resolution of the first-seen subquery


class PromError(Exception):
    """Prometheus could not answer; the message is one line for the user."""


@dataclass(frozen=True)
class Source:
    name: str
    requests: str  # counter
    buckets: str  # histogram buckets
    revision: str  # label naming the revision
    outcome: str  # label splitting the counter
    error_values: tuple[str, ...]
    excluded: tuple[str, ...]  # outcomes that are nobody's requests (client cancels)
    le_scale: float  # bucket bound -> seconds
    extra: str  # extra selector


KBUNDLE = Source(
    "kbundle",
    "kbundle_requests_total",
    "kbundle_request_duration_seconds_bucket",
    "revision",
    "outcome",
    ("server_error",),
    ("cancelled",),
    1.0,
    'component="{component}"',
)
QUEUE_PROXY = Source(
    "queue-proxy",
    "revision_app_request_count",
    "revision_app_request_latencies_bucket",
    "revision_name",
    "response_code_class",
    ("5xx",),
    (),
    0.001,
    'component="{component}"',
)


class Prometheus:
    def __init__(
        self, url: str, timeout_s: float = 10.0, explain: Callable[[str], None] | None = None
    ):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.explain = explain

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """An instant query's vector result (a list of {metric, value})."""
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = self._get("/api/v1/query?" + urllib.parse.urlencode(params), promql)
        result = body.get("data", {}).get("result", [])
        if self.explain:
            shown = [
                f"{ {k: v for k, v in r['metric'].items() if k != '__name__'} } = {r['value'][1]}"
                for r in result
            ]
            self.explain(f"query: {promql}\n  -> " + ("\n  -> ".join(shown) or "(empty)"))
        return result

    def _get(self, path: str, promql: str) -> dict:
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise PromError(_http_message(self.url, exc, promql)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PromError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise PromError(f"{self.url} did not answer like a Prometheus API (not JSON)") from None
        if body.get("status") != "success":
            raise PromError(f"Prometheus rejected {promql!r}: {body.get('error', body)}")
        return body


def _http_message(url: str, exc: urllib.error.HTTPError, promql: str) -> str:
    if exc.code in (401, 403):
        return f"Prometheus at {url} refused access (HTTP {exc.code}): check the URL's credentials"
    try:
        detail = json.loads(exc.read()).get("error", "")
    except ValueError:
        detail = exc.reason
    if exc.code in (400, 422):
        return f"Prometheus rejected the query {promql!r}: {detail}"
    return f"Prometheus at {url} answered HTTP {exc.code}: {detail}"


def selector(labels: dict[str, str], extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels.items() if v]
    return "{" + ",".join([*parts, *([extra] if extra else [])]) + "}"


def first_seen(
    prom: Prometheus, src: Source, sel: str, window_s: int, now: float
) -> dict[str, float]:
    """Revision -> the first time (within the window) it had counted a request. `> 0`: kbundle's
    series exist at zero from start-up (kbundle.serving.metrics.prime), before any request."""
    inf = sel[:-1] + ("," if sel != "{}" else "") + 'le="+Inf"}'  # histogram and counter both
    q = (
        f"min_over_time(timestamp(sum by ({src.revision}) ({src.buckets}{inf}) > 0)"
        f"[{window_s}s:{STEP_S}s])"
    )
    return {r["metric"][src.revision]: float(r["value"][1]) for r in prom.query(q, now)}


def evidence(
    prom: Prometheus, src: Source, sel: str, revision: str, range_s: int, now: float
) -> dict:
    """{requests, errors, buckets, p50_ms, p99_ms} of one revision over the last `range_s`."""
    if range_s < 2 * STEP_S:  # still warming up: nothing to count yet
        empty = {"requests": 0, "errors": 0, "error_rate": 0.0, "buckets": []}
        return {**empty, "p50_ms": None, "p99_ms": None, "range_s": range_s}
    rsel = sel[:-1] + ("," if sel != "{}" else "") + f'{src.revision}="{revision}"}}'
    counts = prom.query(f"sum by ({src.outcome}) (increase({src.requests}{rsel}[{range_s}s]))", now)
    split = {r["metric"].get(src.outcome, ""): float(r["value"][1]) for r in counts}
    requests = sum(v for k, v in split.items() if k not in src.excluded)
    errors = sum(v for k, v in split.items() if k in src.error_values)
    rows = prom.query(f"sum by (le) (increase({src.buckets}{rsel}[{range_s}s]))", now)
    buckets = sorted((float(r["metric"]["le"]) * src.le_scale, float(r["value"][1])) for r in rows)
    quantiles = {}
    for q in (0.5, 0.99):
        found = prom.query(
            f"histogram_quantile({q}, sum by (le) (rate({src.buckets}{rsel}[{range_s}s])))", now
        )
        value = float(found[0]["value"][1]) if found else math.nan
        quantiles[q] = None if math.isnan(value) else value * src.le_scale * 1000
    requests, errors = round(requests), round(errors)  # increase() extrapolates: whole requests
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "buckets": buckets,
        "p50_ms": quantiles[0.5],
        "p99_ms": quantiles[0.99],
        "range_s": range_s,
    }


def gather(
    prom: Prometheus,
    labels: dict[str, str],
    component: str,
    window_s: int,
    warmup_s: int,
) -> tuple[Source, dict[str, dict]]:
    """The source used and {revision: evidence} for every revision seen in the window."""
    now = time.time()
    for src in (KBUNDLE, QUEUE_PROXY):
        sel = selector(labels, src.extra.format(component=component))
        seen = first_seen(prom, src, sel, window_s, now)
        if not seen:
            continue
        out = {}
        for revision, first in seen.items():
            start = now - window_s
            if first > start + 2 * STEP_S:  # appeared inside the window: skip its warm-up
                start = first + warmup_s
            out[revision] = evidence(prom, src, sel, revision, max(int(now - start), 0), now)
        return src, out
    where = ", ".join(f"{k}={v}" for k, v in labels.items() if v)
    raise PromError(
        f"no kbundle_requests_total or revision_app_request_count series for {where} in the "
        f"last {window_s}s (is the PodMonitor applied and the model getting traffic?)"
    )
