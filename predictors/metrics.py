"""Prometheus metrics of the batcher and engine, in the default registry kserve serves on /metrics.

Label children are bound once per model, so the hot path costs one lock-protected add per
observation and never a label lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Histogram

QUEUE_WAIT = Histogram(
    "kbundle_queue_wait_seconds",
    "Time a request waited in the queue before its engine call started (batched or not).",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BATCH_SIZE = Histogram(
    "kbundle_batch_size",
    "Rows per engine call: a dynamic batch, or one request when batching is off.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ENGINE_SECONDS = Histogram(
    "kbundle_engine_seconds",
    "Engine time per batch (concatenate, run, split).",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)


class BatchMetrics:
    """One model's batcher metrics with the label children resolved up front."""

    def __init__(self, model: str):
        self._queue_wait = QUEUE_WAIT.labels(model=model)
        self._batch_size = BATCH_SIZE.labels(model=model)
        self._engine = ENGINE_SECONDS.labels(model=model)

    def observe_queue(self, waits: Sequence[float]) -> None:
        for wait in waits:
            self._queue_wait.observe(wait)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self._batch_size.observe(rows)
        self._engine.observe(seconds)
