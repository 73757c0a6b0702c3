"""Request and error counters by model and protocol, shared by the REST and gRPC routes.

Counters live in prometheus-client's default registry, which kserve already serves on /metrics.
Children are cached per (model, protocol) so a request costs one dict lookup and one add.
"""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS = Counter("kbundle_requests", "V2 inference requests received.", ["model", "protocol"])
ERRORS = Counter(
    "kbundle_request_errors", "V2 inference requests that failed.", ["model", "protocol", "code"]
)

UNKNOWN_MODEL = "_unknown"  # the label for requests naming a model that is not served

_requests: dict[tuple[str, str], object] = {}


def count_request(model: str, protocol: str) -> None:
    child = _requests.get((model, protocol))
    if child is None:
        child = _requests[(model, protocol)] = REQUESTS.labels(model=model, protocol=protocol)
    child.inc()


def count_error(model: str, protocol: str, code: int | str) -> None:
    """Errors are rare: no caching needed."""
    ERRORS.labels(model=model, protocol=protocol, code=str(code)).inc()
