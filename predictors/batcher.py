"""Dynamic batcher: queues requests, runs them as one engine call, hands each its own rows.

Policy (decided once per request, no polling thread):
- A request joins the queue and, if an engine instance is idle, a dispatch is scheduled for the
  end of the current event-loop tick, so everything that arrived in the same tick shares it.
- An idle instance takes the oldest request and every queued request with the same batch key
  (same input names, dtypes, non-batch dims and requested outputs) that still fits in
  `max_batch_size` rows. A request larger than `max_batch_size` runs alone. With padding, the
  key holds the bucket, and neighbouring buckets may join when that is cheaper (padding_plan.py).
- It dispatches at once when the batch is full or when no batch is in flight anywhere (the engine
  would otherwise sit idle: a lone request never pays the delay). When peer instances are busy it
  waits until the oldest request has waited `max_batch_delay_ms`, so the batch can fill.
- While every instance is busy, requests queue up; that queue is what the next batch is cut from.
- Admission (kbundle.predictors.admission) bounds that queue: a request over `max_queue_size` or
  `max_request_rows` is refused in `infer`/`submit`, and one whose deadline passed while queued is
  failed with DeadlineExceeded when a dispatch reaches it, before the engine.

Concatenation, the engine call and the split run on the engine's worker thread; the event loop
only appends to a deque and resolves futures, one `call_soon_threadsafe` per batch. A short batch
of a CPU engine may run on the event loop thread instead (`on_loop_s`, see EngineOnLoop): with
one CPU the two threads cannot overlap, and the hand-off to the engine thread and back (GIL and
context switches) costs more than the engine call itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kbundle.errors import DeadlineExceeded, EngineError, KbundleError
from kbundle.predictors.admission import Admission
from kbundle.predictors.faults import engine_fault
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.padding import Padding
from kbundle.predictors.runner import EngineRunner

logger = logging.getLogger("kbundle.batcher")

BatchKey = tuple


class Waiter:
    """The result slot a transport thread blocks on (`DynamicBatcher.submit`).

    A SimpleQueue, not a concurrent.futures.Future: that builds a Condition and an RLock per
    request and notifies through them, measured as ~20 % of a tiny gRPC request's CPU. The
    first put wins, so a cancel racing the result is harmless.
    """

    __slots__ = ("_slot", "_done")

    def __init__(self) -> None:
        self._slot: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: object) -> None:
        self._done = True
        self._slot.put((True, value))

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._slot.put((False, exc))

    def cancel(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._slot.put((False, concurrent.futures.CancelledError()))
        return True

    def result(self) -> object:
        ok, value = self._slot.get()
        if ok:
            return value
        raise value


@dataclass(eq=False, slots=True)
class _Pending:
    key: BatchKey
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    rows: int
    future: asyncio.Future | Waiter
    enqueued: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    deadline: float | None = None  # time.monotonic() after which it is dropped unrun


def batch_key(inputs: dict[str, np.ndarray], output_names: Sequence[str]) -> BatchKey:
    """Requests may share a batch only when everything but the leading dim matches."""
    return (
        tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items())),
        tuple(output_names),
    )


class EngineOnLoop:
    """Whether a batch is short enough to run on the event loop thread: its rows times the
    engine's recent time per row (an average over the batches run so far) is at most `limit_s`.
    Until a batch has been timed, and with `limit_s` 0, every batch runs on the engine thread.
    Per-row time falls as batches grow, so the estimate errs towards the thread."""

    __slots__ = ("limit_s", "_per_row")

    SMOOTHING = 0.2  # weight of the newest batch in the running average

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._per_row: float | None = None

    def fits(self, rows: int) -> bool:
        return self._per_row is not None and rows * self._per_row <= self.limit_s

    def observe(self, rows: int, seconds: float) -> None:
        if self.limit_s <= 0 or rows < 1:
            return
        per_row = seconds / rows
        last = self._per_row
        self._per_row = per_row if last is None else last + self.SMOOTHING * (per_row - last)


class DynamicBatcher:
    """Batches `infer` calls for one engine; one batch in flight per engine instance."""

    def __init__(
        self,
        runner: EngineRunner,
        model_name: str,
        max_batch_size: int,
        max_batch_delay_ms: float,
        metrics: BatchMetrics | None = None,
        padding: Padding | None = None,
        admission: Admission | None = None,
        on_loop_s: float = 0.0,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 for a batcher")
        self.runner = runner
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self.metrics = metrics
        # With padding, requests of different lengths share a key (their bucket); see padding.py.
        self.padding = padding
        self._key = padding.batch_key if padding is not None else batch_key
        self.admission = admission
        self._queue: deque[_Pending] = deque()
        self._idle = runner.instances
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        # One timer, at the earliest deadline queued (not one per queued request: under load
        # thousands a second, each scanning the queue when it fired).
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[_Pending] = deque()  # from submit() threads, drained on the loop
        self._drain_scheduled = False
        self.on_loop = EngineOnLoop(on_loop_s if runner.instances == 1 else 0.0)

    @property
    def in_flight(self) -> int:
        return self.runner.instances - self._idle

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str],
        request_id: str = "",
        deadline: float | None = None,
        nothing_behind: bool = False,
    ) -> list[np.ndarray]:
        """This request's outputs, in `output_names` order, exactly its own rows (`enqueue`,
        awaited). A cancelled await (client gone) cancels the future: it is skipped when queued
        and its rows are dropped when already in flight; the batch itself is unaffected."""
        return await self.enqueue(inputs, output_names, request_id, deadline, nothing_behind)

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str],
        request_id: str = "",
        deadline: float | None = None,
        nothing_behind: bool = False,
    ) -> asyncio.Future:
        """Queue a request (on the loop thread): the future of its outputs, for callers that
        take results in callbacks (the `--workers` engine owner) or await it (`infer`);
        cancelling it is a client gone. QueueFull or InvalidRequest (rows) raise here when
        admission refuses it; the future fails with DeadlineExceeded when `deadline`
        (time.monotonic()) passes while it is queued. `nothing_behind`: no other request is on
        its way to this queue (the request core knows), so a request that finds the queue
        empty and an engine idle is dispatched now, not a loop turn later."""
        loop = self._loop = asyncio.get_running_loop()
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        deadline = self._admit(rows, deadline)
        names = tuple(output_names)
        item = _Pending(
            self._key(inputs, names),
            inputs,
            names,
            rows,
            loop.create_future(),
            request_id=request_id,
            deadline=deadline,
        )
        self._enqueue(item, nothing_behind)
        return item.future

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str],
        request_id: str = "",
        deadline: float | None = None,
    ) -> Waiter:
        """Thread-safe `infer` for transports on their own threads (the gRPC server): a Waiter
        for this request's outputs. The queue stays on `loop`; cancelling the waiter (client
        gone) drops the request like a cancelled `infer`. Refusals raise here, on the caller's
        thread, without touching the loop."""
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        deadline = self._admit(rows, deadline)
        names = tuple(output_names)
        waiter = Waiter()
        key = self._key(inputs, names)
        item = _Pending(key, inputs, names, rows, waiter, request_id=request_id, deadline=deadline)
        self._inbox.append(item)
        # One loop wake-up per burst, not per request: the drain takes everything queued so far.
        # Safe without a lock: the flag is cleared before the drain reads the inbox, so an item
        # appended after the drain's read sees the flag down and schedules another drain.
        if not self._drain_scheduled:
            self._drain_scheduled = True
            loop.call_soon_threadsafe(self._drain, loop)
        return waiter

    def _admit(self, rows: int, deadline: float | None) -> float | None:
        if self.admission is None:
            return deadline
        self.admission.admit(rows, len(self._queue) + len(self._inbox))
        return self.admission.deadline(deadline)

    def refuse_if_full(self, ahead: int = 0) -> None:
        """QueueFull now if the queue is full, counting `ahead` requests on their way to it: the
        request core asks before decoding a request."""
        if self.admission is not None:
            self.admission.check_room(len(self._queue) + len(self._inbox) + ahead)

    def _gone(self, item: _Pending, now: float) -> bool:
        """True for a queued request that must not run: its client left, or its deadline passed
        (then it is failed here with DeadlineExceeded, before the engine)."""
        if item.future.done():
            if self.admission is not None:
                self.admission.count_disconnected()
            return True
        if item.deadline is None or now < item.deadline:
            return False
        if self.admission is not None:
            item.future.set_exception(self.admission.expired_error())
        else:
            item.future.set_exception(
                DeadlineExceeded(f"model '{self.model_name}': deadline passed while queued")
            )
        return True

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_scheduled = False
        self._loop = loop
        inbox = self._inbox
        while inbox:
            self._enqueue(inbox.popleft())

    def _enqueue(self, item: _Pending, nothing_behind: bool = False) -> None:
        self._queue.append(item)
        if self._idle and not self._scheduled:
            if nothing_behind and len(self._queue) == 1 and not self._inbox:
                # Already the whole batch the dispatcher would cut a turn later. Run on the loop,
                # its result is set before `infer` awaits it, so it is answered in this turn too.
                self._dispatch()
                return
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
        elif item.deadline is not None:  # answer it at its deadline, not at the next dispatch
            if self._expiry is None or item.deadline < self._expiry_at:
                self._arm_expiry(item.deadline)

    def _arm_expiry(self, at: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = at
        self._expiry = self._loop.call_later(at - time.monotonic(), self._expire)

    def _expire(self) -> None:
        """Fail the queued requests whose deadline has passed; the timer moves on to the
        earliest deadline still queued."""
        self._expiry = None
        now = time.monotonic()
        if any(item.deadline is not None and item.deadline <= now for item in self._queue):
            self._queue = deque(item for item in self._queue if not self._gone(item, now))
        deadlines = [item.deadline for item in self._queue if item.deadline is not None]
        if deadlines:
            self._arm_expiry(min(deadlines))

    # -- dispatching (event-loop thread) -------------------------------------------------------
    def _dispatch(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._idle and self._queue:
            now = time.monotonic()
            while self._queue and self._gone(self._queue[0], now):
                self._queue.popleft()  # cancelled or expired while queued
            if not self._queue:
                return
            batch, rows = self._take()
            if rows < self.max_batch_size and self.in_flight:
                wait = self.max_delay - (time.perf_counter() - batch[0].enqueued)
                if wait > 0:
                    self._queue.extendleft(reversed(batch))
                    self._timer = self._loop.call_later(wait, self._dispatch)
                    return
            if self.on_loop.fits(rows):
                self._run_here(batch, rows)
                return
            self._start(batch, rows)

    def _take(self) -> tuple[list[_Pending], int]:
        """Pop the oldest request and the queued ones that may join it (FIFO within a key)."""
        head = self._queue.popleft()
        batch, rows = [head], head.rows
        if rows >= self.max_batch_size or not self._queue:
            return batch, rows
        keep: deque[_Pending] = deque()
        now = time.monotonic()
        joins = self._joins(head)
        while self._queue:
            item = self._queue.popleft()
            if self._gone(item, now):
                continue
            if joins(item.key) and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
                if rows == self.max_batch_size:
                    break
            else:
                keep.append(item)
        keep.extend(self._queue)
        self._queue = keep
        return batch, rows

    def _joins(self, head: _Pending) -> Callable[[BatchKey], bool]:
        if self.padding is None:  # same key only; padding may merge neighbouring buckets
            return head.key.__eq__
        queued = ((item.key, item.rows) for item in (head, *self._queue))  # read only if merging
        return self.padding.joins(head.key, queued, self.max_batch_size)

    def _start(self, batch: list[_Pending], rows: int) -> None:
        self._idle -= 1
        self._observe_queue(batch)
        loop = self._loop
        done = self._completer(batch)
        future = self.runner.submit(self._run_batch, batch, rows)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _run_here(self, batch: list[_Pending], rows: int) -> None:
        """Run the batch on the event loop thread, then let the loop read sockets (new requests,
        probes, refusals) before the next batch is cut."""
        self._observe_queue(batch)
        self._resolve(batch, self._run_batch(batch, rows))
        if self._queue and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _observe_queue(self, batch: list[_Pending]) -> None:
        if self.metrics is not None:
            started = time.perf_counter()
            self.metrics.observe_queue([started - item.enqueued for item in batch])

    def _completer(self, batch: list[_Pending]) -> Callable:
        def done(future) -> None:
            self._idle += 1
            try:
                results = future.result()
            except BaseException as exc:  # the worker never raises; belt and braces
                results = [exc] * len(batch)
            self._resolve(batch, results)
            if self._queue and not self._scheduled:
                self._dispatch()

        return done

    @staticmethod
    def _resolve(batch: list[_Pending], results: list) -> None:
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue  # cancelled while in flight: its rows are simply dropped
            try:
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            except asyncio.InvalidStateError:
                pass  # belt and braces: done() was checked on this thread just above

    # -- the batch itself (engine worker thread) ----------------------------------------------
    def _run_batch(self, batch: list[_Pending], rows: int) -> list:
        started = time.perf_counter()
        try:
            results = self._run_rows(batch, rows)
            if self.padding is not None:  # the engine-cost fit that decides merging
                self.padding.observe([i.inputs for i in batch], rows, time.perf_counter() - started)
        except Exception as exc:
            results = self._run_alone(batch, exc)
        took = time.perf_counter() - started
        self.on_loop.observe(rows, took)
        if self.metrics is not None:
            self.metrics.observe_batch(rows, took)
        return results

    def _run_alone(self, batch: list[_Pending], exc: Exception) -> list:
        """One bad request must not fail its neighbours: rerun each alone, so only the
        request(s) the engine really rejects get the error."""
        if len(batch) == 1:
            return [self._engine_error(exc, batch[0])]
        logger.warning(
            "model '%s': batch of %d requests failed (%s); retrying each alone",
            self.model_name,
            len(batch),
            exc,
        )
        results: list = []
        for item in batch:
            try:
                results.append(self._run_rows([item], item.rows)[0])
            except Exception as single:
                results.append(self._engine_error(single, item))
        return results

    def _run_rows(self, batch: list[_Pending], rows: int) -> list[list[np.ndarray]]:
        names = batch[0].output_names
        if len(batch) == 1:
            return [self.runner.engine.run(batch[0].inputs, names)]
        parts, lengths = self._parts(batch)
        inputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        outputs = self.runner.engine.run(inputs, names)
        for name, out in zip(names, outputs, strict=True):
            if out.ndim == 0 or out.shape[0] != rows:
                raise EngineError(
                    f"model '{self.model_name}': output '{name}' has shape {list(out.shape)}, "
                    f"which does not split into the batch's {rows} rows"
                )
        results, start = [], 0
        for item, length in zip(batch, lengths, strict=True):
            end = start + item.rows
            results.append(self._own(names, [out[start:end] for out in outputs], length))
            start = end
        return results

    def _parts(self, batch: list[_Pending]) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        """Each request's inputs, padded to the batch's bucket when padding is on."""
        if self.padding is None:
            return [item.inputs for item in batch], [0] * len(batch)
        lengths = [self.padding.length(item.inputs) for item in batch]
        target = self.padding.bucket(max(lengths)) or max(lengths)
        self.padding.count(lengths, target)
        return [self.padding.pad(item.inputs, target) for item in batch], lengths

    def _own(self, names: Sequence[str], outputs: list[np.ndarray], length: int) -> list:
        if self.padding is None:
            return outputs
        return [self.padding.cut(n, out, length) for n, out in zip(names, outputs, strict=True)]

    def _engine_error(self, exc: Exception, item: _Pending) -> KbundleError:
        return engine_fault(self.model_name, exc, item.inputs, item.request_id)
