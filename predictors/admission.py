"""Admission control for one model's queue: a Triton-like queue policy the batcher consults.

- `max_queue_size` bounds the requests waiting for a batch; one more is refused at once with
  QueueFull (429 + Retry-After / RESOURCE_EXHAUSTED), before it costs a queue slot.
- Each request may carry a deadline (absolute `time.monotonic()`: the gRPC deadline, the V2
  `timeout` parameter or the timeout header); `max_queue_delay_ms` caps the wait of every request.
  A queued request past either is dropped before the engine and fails with DeadlineExceeded.
- `max_request_rows` refuses a request with more rows than one engine call may take (400).

Every drop is counted in `kbundle_requests_dropped_total{model,reason}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kbundle.errors import DeadlineExceeded, InvalidRequest, QueueFull
from kbundle.serving.metrics import DROPPED
from kbundle.settings import ModelSettings

REASONS = ("queue_full", "deadline", "disconnected", "too_large")


@dataclass(frozen=True)
class QueuePolicy:
    """`max_queue_size` 0 and `max_queue_delay_ms` 0 mean no bound; `max_request_rows` 0 none."""

    max_queue_size: int = 0
    max_queue_delay_ms: float = 0.0
    max_request_rows: int = 0
    retry_after_s: float = 1.0


class Admission:
    """One model's queue policy and drop counters; cheap enough to run on every request."""

    def __init__(self, model: str, policy: QueuePolicy):
        self.model = model
        self.policy = policy
        self._max_delay = policy.max_queue_delay_ms / 1000.0
        self._dropped = {reason: DROPPED.labels(model=model, reason=reason) for reason in REASONS}

    def admit(self, rows: int, queued: int) -> None:
        """Raise unless a request of `rows` rows may join a queue of `queued` requests."""
        limit = self.policy.max_request_rows
        if limit and rows > limit:
            self._dropped["too_large"].inc()
            raise InvalidRequest(
                f"model '{self.model}': request has {rows} rows, over the limit of {limit} "
                f"(setting max_request_rows); split it into requests of at most {limit} rows"
            )
        self.check_room(queued)

    def check_room(self, queued: int) -> None:
        """Raise QueueFull when `queued` requests already fill the queue. Needs nothing of the
        request, so the request core calls it before decoding one (a refusal costs no decode)."""
        size = self.policy.max_queue_size
        if size and queued >= size:
            self._dropped["queue_full"].inc()
            raise QueueFull(
                f"model '{self.model}': queue full ({size} requests waiting, setting "
                f"max_queue_size); retry after {self.policy.retry_after_s:g} s",
                retry_after_s=self.policy.retry_after_s,
            )

    def deadline(self, requested: float | None) -> float | None:
        """The request's effective deadline: its own, capped by `max_queue_delay_ms` from now."""
        if not self._max_delay:
            return requested
        capped = time.monotonic() + self._max_delay
        return capped if requested is None else min(requested, capped)

    def expired_error(self) -> DeadlineExceeded:
        self._dropped["deadline"].inc()
        return DeadlineExceeded(
            f"model '{self.model}': deadline passed while queued (request timeout or "
            f"max_queue_delay_ms {self.policy.max_queue_delay_ms:g}); not run"
        )

    def count_disconnected(self) -> None:
        self._dropped["disconnected"].inc()

    def count(self, reason: str) -> None:
        self._dropped[reason].inc()


def queue_policy(settings: ModelSettings, max_batch: int | None = None) -> QueuePolicy:
    """The policy the settings ask for; `max_request_rows` -1 means the batcher's max batch
    (`max_batch`: max_batch_size capped by the engine, e.g. a TensorRT profile's max)."""
    rows = settings.max_request_rows
    if rows < 0:
        rows = settings.max_batch_size if max_batch is None else max_batch
    return QueuePolicy(settings.max_queue_size, settings.max_queue_delay_ms, rows)
