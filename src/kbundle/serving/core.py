"""The one V2 request core (MLServer's dataplane is the model): REST and gRPC only translate.

`RequestCore.infer` (async) and `RequestCore.infer_blocking` (for a transport thread) own model
look-up, readiness, the validation call, metrics and error accounting. A transport hands either a
decoded `ArrayRequest` or a decoder that reads its wire form against the model's validator (so a
wrong request is refused on its tensor headers before data is copied), and an encoder for the
answer. A model with a bounded queue is asked for room before a request's body is read (`admit`):
the place it gets counts toward the queue until the request reaches it, so a burst read in one
loop turn cannot all pass a nearly full queue. Every failure leaves as a `KBundleError` whose
`status` the transport maps through `kbundle.status`; every request is counted once, here, with
the same labels on both transports.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from kbundle.errors import (
    ClientCancelled,
    KBundleError,
    ModelNotFoundError,
    ModelUnavailable,
    Status,
    Unsupported,
)
from kbundle.serving import metrics
from kbundle.serving.arrays import ArrayModel, ArrayRequest, ArrayResponse, is_array_model
from kbundle.serving.status_map import classify, log_if_internal
from kbundle.status import error_outcome
from kbundle.validation import SignatureValidator

T = TypeVar("T")
Decoder = Callable[[SignatureValidator | None], ArrayRequest]
Encoder = Callable[[str, ArrayRequest, ArrayResponse], T]
Request = ArrayRequest | Decoder  # what a transport hands the core: decoded, or how to decode it
OnCancel = Callable[[Callable[[], object]], object]


@dataclass
class CallContext:
    """What a transport tells the core about one call."""

    protocol: str  # "rest" | "grpc": the metrics label
    on_cancel: OnCancel | None = None  # registers a callback run when the client goes away
    client_gone: Callable[[], bool] = lambda: False
    # gRPC's server refuses new calls itself once stopped; REST's listener stays open while
    # draining (probes must read not-ready), so the core refuses REST calls that arrive then.
    refuse_when_draining: bool = False


def _keep(name: str, request: ArrayRequest, response: ArrayResponse) -> Any:
    return request, response


class Admitted:
    """A request let in before its body was read: its place in its model's queue, held until
    the core queues it (`RequestCore.infer`) or the transport drops it (`release`, idempotent)."""

    __slots__ = ("_held", "model")

    def __init__(self, held: dict[str, int], model: str):
        self._held: dict[str, int] | None = held
        self.model = model

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            left = held[self.model] - 1
            if left:
                held[self.model] = left
            else:  # no entry per name ever seen: names come from clients
                del held[self.model]


class RequestCore:
    """One per process; shared by the REST middleware and the gRPC servers."""

    def __init__(self, registry: Any):
        self.registry = registry
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop (set at start)
        self.draining = False
        self._inflight = 0
        self._lock = threading.Lock()
        self._cancels: set[Callable[[], object]] = set()
        self._held: dict[str, int] = {}  # per model: requests admitted and not queued yet

    @property
    def inflight(self) -> int:
        return self._inflight

    def _checked(self, name: str, model: Any, call: CallContext) -> ArrayModel:
        """The served model, or NOT_FOUND / UNAVAILABLE. While draining, calls the transports
        already accepted are still served although readiness reports false."""
        if model is None:
            raise ModelNotFoundError(f"model '{name}' is not served here")
        if not is_array_model(model):
            raise Unsupported(f"model '{name}' is not served by the kbundle V2 core")
        if self.draining and call.refuse_when_draining:
            raise ModelUnavailable(f"model '{name}' is not ready: the server is shutting down")
        if not model.ready and not self.draining:
            raise ModelUnavailable(f"model '{name}' is not ready")
        return model

    async def infer(
        self,
        model_name: str,
        request: Request,
        call: CallContext,
        encode: Encoder = _keep,
        admitted: Admitted | None = None,
    ) -> Any:
        """The answer, encoded. `admitted`: the place `admit` gave this request; it is handed
        back here, where the request goes on to the model's queue without yielding."""
        if admitted is not None:
            admitted.release()
        started, label, model, array_request = self._start(model_name, request, call)
        # A request admitted at its head with none admitted behind it is the last one read: the
        # batcher may start it at once instead of waiting a loop turn for others to join.
        array_request.nothing_behind = admitted is not None and model_name not in self._held
        try:
            response = await model.infer_arrays(array_request)
            result = encode(model.name, array_request, response)
        except asyncio.CancelledError:  # the client left: the task must stay cancelled
            self._end(label, call.protocol, "cancelled", started)
            raise
        except Exception as exc:
            raise self._failed(label, call, started, exc) from exc
        self._end(label, call.protocol, "ok", started)
        return result

    def infer_blocking(
        self, model_name: str, request: Request, call: CallContext, encode: Encoder = _keep
    ) -> Any:
        """`infer` for a transport thread: blocks that thread, never the loop."""
        started, label, model, array_request = self._start(model_name, request, call)
        try:
            response = self._run_blocking(model, array_request, call)
            result = encode(model.name, array_request, response)
        except Exception as exc:
            raise self._failed(label, call, started, exc) from exc
        outcome = "cancelled" if call.client_gone() else "ok"
        self._end(label, call.protocol, outcome, started)
        return result

    def _run_blocking(self, model: Any, request: ArrayRequest, call: CallContext) -> ArrayResponse:
        cancels: list[Callable[[], object]] = []

        def on_cancel(cancel: Callable[[], object]) -> None:
            cancels.append(cancel)
            self._cancels.add(cancel)
            # grpc's add_callback answers False, and never calls back, when the call already
            # ended: a client that left before its call got here must still cancel it.
            if call.on_cancel is not None and call.on_cancel(cancel) is False:
                cancel()

        try:
            blocking = getattr(model, "infer_arrays_blocking", None)
            if blocking is not None:  # the predictor: straight to its batcher, no coroutine
                return blocking(request, self.loop, on_cancel)
            return self.run_on_loop(model.infer_arrays(request), on_cancel)
        finally:
            self._cancels.difference_update(cancels)

    def cancel_inflight(self) -> int:
        """Cancel the blocking calls still waiting (a drain that ran out of time), so their
        transport threads return at once instead of waiting on a loop that is going away."""
        pending = list(self._cancels)
        for cancel in pending:
            cancel()
        return len(pending)

    def run_on_loop(self, coro: Coroutine[Any, Any, T], on_cancel: OnCancel) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        on_cancel(future.cancel)  # a normal finish makes the later cancel() a no-op
        return future.result()

    def _start(
        self, model_name: str, request: Request, call: CallContext
    ) -> tuple[float, str, ArrayModel, ArrayRequest]:
        """Counts the call in; (start time, metrics label, the checked model, the decoded
        request). A refusal here is counted out and raised as its KBundleError."""
        started, model, label = self._begin(model_name)
        try:
            model = self._checked(model_name, model, call)
            _refuse_if_full(model)
            return started, label, model, _decoded(model, request)
        except Exception as exc:
            raise self._failed(label, call, started, exc) from exc

    def admit(self, model_name: str, call: CallContext) -> Admitted | None:
        """Before a request's body is read: QueueFull (counted like any refusal) when its model's
        queue has no room, counting the requests already admitted that have not reached it; else
        this request's place, for `infer`. Nothing else is checked here (None for a model that is
        not served or has no bounded queue: `infer` answers those)."""
        model = self.registry.get_model(model_name)
        if model is None or not is_array_model(model):
            return None  # `infer` refuses it with the right error
        refuse = getattr(model, "refuse_if_full", None)
        if refuse is None:
            return None
        try:
            refuse(self._held.get(model_name, 0))
        except KBundleError as exc:
            started, _, label = self._begin(model_name)
            raise self._failed(label, call, started, exc) from exc
        self._held[model_name] = self._held.get(model_name, 0) + 1
        return Admitted(self._held, model_name)

    # -- accounting ----------------------------------------------------------------------------
    def _begin(self, model_name: str) -> tuple[float, Any, str]:
        """Start time, the registered model (or None) and its metrics label."""
        with self._lock:
            self._inflight += 1
        model = self.registry.get_model(model_name)
        # Unknown names share one label: a client must not be able to grow the label set.
        label = model_name if model is not None else metrics.UNKNOWN_MODEL
        return time.perf_counter(), model, label

    def _end(self, label: str, protocol: str, outcome: str, started: float) -> None:
        metrics.record(label, protocol, outcome, time.perf_counter() - started)
        with self._lock:
            self._inflight -= 1

    def _failed(
        self, label: str, call: CallContext, started: float, exc: BaseException
    ) -> KBundleError:
        error = as_error(exc)
        # A call dropped for its deadline stays DEADLINE_EXCEEDED: client_gone() is also true
        # once the deadline passed, and a client still waiting must not read CANCELLED.
        deadline = error.status is Status.DEADLINE_EXCEEDED
        if (call.client_gone() and not deadline) or error.status is Status.CANCELLED:
            error = ClientCancelled(error.message)
        else:
            log_if_internal(exc, f"{call.protocol} infer of '{label}'")
        self._end(label, call.protocol, error_outcome(error), started)
        return error


def as_error(exc: BaseException) -> KBundleError:
    """The exception as a client-safe KBundleError (unknown faults say only 'internal')."""
    if isinstance(exc, KBundleError):
        return exc
    if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return ClientCancelled("the client cancelled the request")
    status, message = classify(exc)
    return KBundleError(message, status)


def _refuse_if_full(model: ArrayModel) -> None:
    """A model with a bounded queue (the predictor) refuses a request while the queue is full
    before it is decoded: under overload a refusal must cost microseconds, not a decode."""
    refuse = getattr(model, "refuse_if_full", None)
    if refuse is not None:
        refuse()


def _decoded(model: ArrayModel, request: Request) -> ArrayRequest:
    if isinstance(request, ArrayRequest):
        return request
    return request(model.validator)
