"""The gRPC handler pool: what grpcio's sync server runs each accepted call on.

grpcio's server thread accepts every call at once and submits it to its `thread_pool`; with a
stock ThreadPoolExecutor the calls beyond the busy handler threads wait in that executor's FIFO.
Under overload (a closed loop of 256 clients with 100 ms deadlines against ~16 handler threads)
that FIFO makes every call wait behind ~200 older ones, so nearly every call that reaches a
handler has spent its deadline already: ~1 % goodput (bench/results/overload.md, before).

`HandlerPool` keeps that queue itself and changes two things:
- Adaptive LIFO (as in Facebook's "Fail at scale"): FIFO while the oldest queued call has waited
  less than `lifo_after_s`; beyond that, the newest call is served first, so under overload fresh
  calls are answered within their deadline and the stale ones give up instead of all of them.
- Under congestion, a call with less than `shed_below_s` of its deadline left is taken from the
  old end and refused at once (`shedding()` tells its handler to answer RESOURCE_EXHAUSTED
  before decoding): its caller learns now, while it can still back off, instead of at its
  deadline; callers that back off are what lets the queue drain (a caller that sees
  DEADLINE_EXCEEDED retries at once, so an overloaded server would stay overloaded).
- A queued call whose gRPC deadline has passed is dropped unrun: grpc core already ended it with
  DEADLINE_EXCEEDED (the client's own timer fires at the same moment), so running its handler
  would only spend the core on an answer nobody reads. Its ticket is finished so grpcio's
  concurrent-RPC count goes down. Calls without a deadline are never dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any

from prometheus_client import Counter

logger = logging.getLogger("kbundle.grpc")

EXPIRED = Counter(
    "kbundle_grpc_calls_expired",
    "gRPC calls dropped unrun by the handler pool: their deadline passed while they queued.",
)
SHED = Counter(
    "kbundle_grpc_calls_shed",
    "gRPC calls refused with RESOURCE_EXHAUSTED before decoding: the pool was congested and "
    "too little of their deadline was left.",
)
_current = threading.local()


def shedding() -> bool:
    """True on a handler thread whose current call the pool chose to refuse (see HandlerPool)."""
    return getattr(_current, "shed", False)


_NO_DEADLINE = float("inf")


class CallTicket:
    """What `submit` returns: grpcio only calls `add_done_callback` on it (to count the call
    out). A concurrent.futures.Future would build a Condition per call and notify through it,
    measured at ~10 % of a tiny model's gRPC call; list.pop() hands each callback out once."""

    __slots__ = ("_callbacks", "_done")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[CallTicket], object]] = []
        self._done = False

    def add_done_callback(self, fn: Callable[[CallTicket], object]) -> None:
        self._callbacks.append(fn)
        if self._done:  # finished before grpcio asked: run it now (once, whoever pops it)
            self._flush()

    def done(self) -> bool:
        return self._done

    def finish(self) -> None:
        self._done = True
        self._flush()

    def _flush(self) -> None:
        while self._callbacks:
            try:
                fn = self._callbacks.pop()
            except IndexError:  # another thread took the last one
                return
            fn(self)


Item = tuple[CallTicket, Callable, tuple, dict, float, float]


def call_deadline(args: tuple) -> float:
    """The call's deadline (time.time()) from grpcio's submit arguments
    (`context.run, handler_fn, rpc_event, ...`), or inf when it has none / is not a call."""
    event = args[1] if len(args) > 1 else None
    details = getattr(event, "call_details", None)
    deadline = getattr(details, "deadline", None)
    return _NO_DEADLINE if deadline is None else float(deadline)


class HandlerPool(futures.Executor):
    """A fixed set of handler threads over one adaptive-LIFO queue (see the module docstring).

    Threads sleep on a C-level SimpleQueue of wake-up tokens, one per submitted call, not on a
    threading.Condition: that allocates a lock per wait and notifies in Python, measured as ~18 %
    of the GIL time of a tiny model's gRPC call (bench/profile_grpc.py)."""

    def __init__(
        self,
        threads: int,
        lifo_after_s: float = 0.02,
        shed_below_s: float = 0.03,
        name: str = "grpc",
    ):
        self.threads = threads
        self.lifo_after_s = lifo_after_s
        self.shed_below_s = shed_below_s
        self.expired = 0  # calls dropped unrun (their deadline passed while they queued)
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()  # held only to choose and pop the next call
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        for index in range(threads):
            threading.Thread(target=self._work, name=f"{name}_{index}", daemon=True).start()

    @property
    def queued(self) -> int:
        return len(self._items)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> CallTicket:  # type: ignore[override]
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        ticket = CallTicket()
        self._items.append((ticket, fn, args, kwargs, time.monotonic(), call_deadline(args)))
        self._tokens.put(True)
        return ticket

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        dropped: list[Item] = []
        if cancel_futures:
            with self._lock:
                dropped, self._items = list(self._items), deque()
        for item in dropped:
            item[0].finish()
        for _ in range(self.threads):
            self._tokens.put(False)

    # -- handler threads -------------------------------------------------------------------------
    def _work(self) -> None:
        while self._tokens.get():
            item, shed, expired = self._next()
            for old in expired:  # outside our lock: grpcio's done-callback takes its own
                old[0].finish()
            if item is None:
                continue
            _current.shed = shed
            try:
                _run(item)
            finally:
                _current.shed = False

    def _next(self) -> tuple[Item | None, bool, list[Item]]:
        """The call to run next, whether to refuse it, and the expired ones dropped."""
        with self._lock:
            expired = self._drop_expired()
            if not self._items:
                return None, False, expired
            oldest = self._items[0]
            if time.monotonic() - oldest[4] <= self.lifo_after_s:
                return self._items.popleft(), False, expired
            if oldest[5] - time.time() < self.shed_below_s:
                SHED.inc()
                return self._items.popleft(), True, expired
            return self._items.pop(), False, expired

    def _drop_expired(self) -> list[Item]:
        """Pop queued calls from the old end while their deadline has passed."""
        now, items, expired = time.time(), self._items, []
        while items and items[0][5] <= now:
            expired.append(items.popleft())
        if expired:
            self.expired += len(expired)
            EXPIRED.inc(len(expired))
        return expired


def _run(item: Item) -> None:
    ticket, fn, args, kwargs = item[:4]
    try:
        fn(*args, **kwargs)
    except BaseException:  # grpcio's own pool functions catch and log; belt and braces
        logger.exception("gRPC handler pool: call failed")
    finally:
        ticket.finish()
