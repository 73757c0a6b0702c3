"""V2 gRPC on grpcio's thread-pool (sync) server, with the async handlers bridged to the loop.

Why not grpc.aio: on one core grpcio's asyncio server costs more server CPU per trivial unary
RPC than the sync server, and serves ModelInfer one RPC at a time into the event loop, while
the sync server's handler threads hand requests to the batcher concurrently. bench/grpc_ab.py
measures both (echo and ModelInfer, same run, one pinned core): bench/results/grpc_ab.md.
The handler threads run on kbundle.serving.grpc_pool.HandlerPool (adaptive LIFO, expired calls
dropped, congested late calls shed), and grpcio's own concurrent-RPC cap refuses calls beyond
threads + max_queue_size before anything is read (kbundle.serving.grpc_sizing.grpc_max_calls).

ModelInfer goes to the request core's blocking entry (kbundle.serving.core): decode and encode on
the gRPC thread, the model call on the batcher. kserve's other RPCs (and component hooks such as
ModelConfig) are its async methods, run on the loop unchanged. Every error goes through the one
status table (kbundle.status).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from kbundle.errors import KBundleError
from kbundle.serving.core import CallContext, RequestCore, as_error
from kbundle.serving.grpc_pool import shedding
from kbundle.serving.status_map import log_if_internal
from kbundle.serving.v2_grpc import ArrayServicer, encode_response, grpc_decoder
from kbundle.status import grpc_code

logger = logging.getLogger("kbundle.grpc")

SERVICE = "inference.GRPCInferenceService"
SHED_MESSAGE = (
    "server overloaded: too little of this call's deadline was left after queueing; retry after 1 s"
)


def abort_mapped(context: grpc.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    """End the RPC with the code and client-safe message of the one status table."""
    if context.is_active():
        log_if_internal(exc, method)
    error = as_error(exc)
    context.abort(grpc_code(error.status), error.message)
    raise AssertionError("context.abort returned")  # grpc always raises; keeps typing honest


class LoopBridge:
    """Runs coroutines on the server's event loop from gRPC threads and waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, Any], context: grpc.ServicerContext) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        # Client gone (cancel, deadline): cancel the task, so a queued request is skipped by
        # the batcher; after a normal finish cancel() on the done future does nothing.
        context.add_callback(future.cancel)
        return future.result()

    def unary(self, behavior: Callable, method: str) -> Callable:
        """A sync unary-unary behavior for an async one, errors mapped."""

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return self.run(behavior(request, context), context)
            except Exception as exc:
                error = exc
            abort_mapped(context, error, method)

        return call

    def handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
            return handler._replace(unary_unary=self.unary(handler.unary_unary, method))
        if any(
            inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            for fn in (handler.unary_stream, handler.stream_unary, handler.stream_stream)
            if fn is not None
        ):
            raise TypeError(f"{method}: only unary-unary async handlers can be served")
        return handler


class _BridgedGeneric(grpc.GenericRpcHandler):
    """A component's generic handler (async behaviors) served by the sync server."""

    def __init__(self, inner: grpc.GenericRpcHandler, bridge: LoopBridge):
        self._inner = inner
        self._bridge = bridge
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method not in self._cache:
            found = self._inner.service(handler_call_details)
            self._cache[method] = None if found is None else self._bridge.handler(found, method)
        return self._cache[method]


class HandlerCapture:
    """Stands in for a server to collect the handlers kserve's generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update(handlers)


def model_infer_behavior(core: RequestCore) -> Callable:
    """ModelInfer: codec on the gRPC thread, the request core's blocking entry."""

    def model_infer(request: pb.ModelInferRequest, context: grpc.ServicerContext):
        if shedding():  # before decoding: the pool is congested and this call is nearly late
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, SHED_MESSAGE)
        call = CallContext(
            protocol="grpc",
            on_cancel=context.add_callback,
            # its own deadline passed = the client gave up, as when grpc cancels the call
            client_gone=lambda: context.time_remaining() <= 0 or not context.is_active(),
        )
        decode = grpc_decoder(request, context)
        try:
            return core.infer_blocking(request.model_name, decode, call, encode_response)
        except KBundleError as exc:
            error = exc
        context.abort(grpc_code(error.status), error.message)

    return model_infer


def v2_handlers(
    servicer: ArrayServicer, bridge: LoopBridge, core: RequestCore
) -> dict[str, grpc.RpcMethodHandler]:
    """kserve's GRPCInferenceService handlers (ours where ArrayServicer overrides), bridged,
    with ModelInfer on the request core's blocking entry."""
    capture = HandlerCapture()
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = {name: bridge.handler(h, name) for name, h in capture.handlers.items()}
    handlers["ModelInfer"] = capture.handlers["ModelInfer"]._replace(
        unary_unary=model_infer_behavior(core)
    )
    return handlers


def bridge_generic(
    handlers: Sequence[grpc.GenericRpcHandler], bridge: LoopBridge
) -> tuple[grpc.GenericRpcHandler, ...]:
    return tuple(_BridgedGeneric(h, bridge) for h in handlers)
