"""The unbatched path's queue (max_batch_size 0, or a model without a batch dim).

Each request runs alone on an engine instance thread (kbundle.predictors.runner). Requests that
wait for a free instance are this model's queue, under the same admission policy as the
batcher's (kbundle.predictors.admission): one over `max_queue_size` is refused at once
(QueueFull), and one whose deadline (its own, capped by `max_queue_delay_ms`) passes before an
instance takes it is failed at its deadline with DeadlineExceeded and never runs. A request
already running is let finish, as in the batcher. A cancelled request (client gone) leaves the
queue at once and is counted `disconnected`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from kbundle.predictors.admission import Admission
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.runner import EngineRunner


@dataclass(eq=False, slots=True)
class Job:
    """One queued request. It holds no reference to its future (whose done-callback holds the
    job): a cycle would keep the request's arrays alive until the next garbage collection."""

    inputs: dict[str, np.ndarray] | None
    names: tuple[str, ...]
    rows: int
    deadline: float | None
    enqueued: float = field(default_factory=time.perf_counter)
    expired: bool = False  # cancelled by its deadline, not by its client


@dataclass(eq=False)
class UnbatchedQueue:
    """Requests waiting for an engine instance, bounded and deadline-checked."""

    runner: EngineRunner
    admission: Admission
    metrics: BatchMetrics
    batchable: bool  # False: the leading dim is no row count
    _waiting: int = 0  # submitted, not yet taken by an instance (nor cancelled)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def queued(self) -> int:
        return self._waiting

    def refuse_if_full(self, ahead: int = 0) -> None:
        """QueueFull now if the queue is full, counting `ahead` requests on their way to it: the
        request core asks before decoding a request."""
        self.admission.check_room(self._waiting + ahead)

    def submit(
        self, inputs: dict[str, np.ndarray], names: Sequence[str], deadline: float | None
    ) -> tuple[Job, Future]:
        """Queue a request for the next free instance (the future of its outputs), or raise
        the admission refusal."""
        rows = _rows(inputs) if self.batchable else 0
        with self._lock:  # check and take the slot at once: transport threads race here
            self.admission.admit(rows, self._waiting)
            self._waiting += 1
        job = Job(inputs, tuple(names), rows, self.admission.deadline(deadline))
        future = self.runner.submit(self._run, job)
        future.add_done_callback(partial(self._finished, job))
        return job, future

    async def infer(
        self, inputs: dict[str, np.ndarray], names: Sequence[str], deadline: float | None
    ) -> list[np.ndarray]:
        """The request's outputs; DeadlineExceeded at its deadline if it is still queued."""
        job, future = self.submit(inputs, names, deadline)
        waiter = asyncio.wrap_future(future)
        try:
            if job.deadline is not None:
                await asyncio.wait([waiter], timeout=max(0.0, job.deadline - time.monotonic()))
                self._expire(job, future)
            return await waiter
        except asyncio.CancelledError:  # client gone: a queued job never runs
            future.cancel()
            raise

    def wait(self, job: Job, future: Future) -> list[np.ndarray]:
        """`infer`'s wait for a transport thread (blocks it, not the loop)."""
        if job.deadline is not None:
            try:
                return future.result(max(0.0, job.deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                self._expire(job, future)
        return future.result()

    def _expire(self, job: Job, future: Future) -> None:
        """At the deadline: a job still queued is cancelled and failed; a running one finishes."""
        if future.done():
            return
        job.expired = True
        if future.cancel():
            raise self.admission.expired_error()
        job.expired = False

    def _run(self, job: Job) -> list[np.ndarray]:
        """On the engine thread: the job leaves the queue; it runs unless its deadline passed."""
        self._leave()
        started = time.perf_counter()
        if job.deadline is not None and time.monotonic() >= job.deadline:
            raise self.admission.expired_error()
        self.metrics.observe_queue([started - job.enqueued])
        inputs, job.inputs = job.inputs, None  # asyncio.wrap_future's future<->future cycle
        outputs = self.runner.engine.run(inputs, job.names)  # keeps the job until gc otherwise
        self.metrics.observe_batch(job.rows or 1, time.perf_counter() - started)
        return outputs

    def _finished(self, job: Job, future: Future) -> None:
        if not future.cancelled():
            return  # it ran (or failed running): `_run` already left the queue
        self._leave()
        job.inputs = None  # the pool keeps the cancelled job until a thread skips it
        if not job.expired:
            self.admission.count_disconnected()

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1


def _rows(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return first.shape[0] if first is not None and first.ndim else 0
