"""V2 gRPC on the serving event loop, without grpcio's server: the predictor's default.

Why: on one core grpcio's sync server spends ~240 µs of server CPU per trivial unary call in its
Python layer, and a Python HTTP/2 library (h2) ~280 µs; framing the few HTTP/2 frames a unary
gRPC call needs here costs ~60 µs (bench/grpc_ab.py, echo rows). The wire stays standard
gRPC-over-HTTP/2: tritonclient, perf_analyzer and any gRPC client work unchanged.

Calls run as tasks on the loop, like the REST fast path: ModelInfer is parsed with protobuf's
upb parser, decoded against the model's validator and handed to the request core (one batcher
hand-off, no thread hop); kserve's other RPCs and component hooks are served from their
grpcio method handlers. Admission happens when a call's headers arrive, before its body is
read: too many calls held, or the (single) model's queue full, is RESOURCE_EXHAUSTED with a
`grpc-retry-pushback-ms` hint. A call whose deadline passes is ended with DEADLINE_EXCEEDED and
its queued request is dropped; an RST_STREAM or a lost connection cancels it the same way.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer

from kbundle.errors import KBundleError, Status
from kbundle.serving import h2_frames as h2
from kbundle.serving.core import CallContext, as_error
from kbundle.serving.grpc_lean_call import RESOURCE_EXHAUSTED, AbortError, Call, Refusal
from kbundle.serving.grpc_lean_conn import H2Connection
from kbundle.serving.grpc_sizing import grpc_max_calls, grpc_threads
from kbundle.serving.grpc_sync import SERVICE, HandlerCapture
from kbundle.serving.lifecycle import bind_grpc_socket
from kbundle.serving.limits import HttpLimits
from kbundle.serving.status_map import log_if_internal
from kbundle.serving.v2_grpc import (
    GRPC_DEADLINE_GRACE_S,
    ArrayServicer,
    encode_response,
    grpc_decoder,
)
from kbundle.status import grpc_code

logger = logging.getLogger("kbundle.grpc")
MODEL_INFER = f"/{SERVICE}/ModelInfer".encode()
RETRY_PUSHBACK = h2.literal(b"grpc-retry-pushback-ms", b"1000")  # gRFC A6: the server's hint
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
SWEEP_S = 1.0
# Calls whose message is complete start (decode, queue) at most this many per loop turn, so a
# read that brought many calls cannot hold the loop for all of their decodes before it reads
# the sockets again (where refusals are answered): ~50 µs each, so ~0.4 ms a turn.
STARTS_PER_TURN = 8
SLOW_BODY = "the request message did not arrive within KBUNDLE_BODY_TIMEOUT_S"


class CallDetails:
    """grpc.HandlerCallDetails for a generic handler's look-up."""

    def __init__(self, method: str, metadata: list):
        self.method, self.invocation_metadata = method, metadata


class KbundleLeanGRPCServer(GRPCServer):
    """kserve's GRPCServer interface (bind, start, drain), served by H2Connection on the loop."""

    grpc_hooks: tuple = ()
    core: Any  # kbundle.serving.core.RequestCore

    def bind(self, max_workers: int) -> None:
        """Bind the port now, before anything serves: a port in use is refused at once."""
        settings = self._served_settings()
        # The sync server's thread count was its cap on calls the batcher sees; the same figure
        # keeps the same admission bound here (kbundle.serving.grpc_sizing).
        threads = max(max_workers or 0, grpc_threads(settings))
        self.max_calls = grpc_max_calls(threads, settings)
        self.limits: HttpLimits = self._kwargs.get("http_limits") or HttpLimits.from_env()
        self.max_message_bytes = int(self._kwargs.get("max_request_bytes") or 2**31 - 1)
        self.max_header_bytes = self.limits.max_header_bytes
        share = bool(self._kwargs.get("share_ports"))
        self._sock = bind_grpc_socket(self._port, reuseport=share)
        servicer = ArrayServicer(self._data_plane, self._model_repository_extension, self.core)
        capture = HandlerCapture()
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
        self._handlers = {f"/{SERVICE}/{name}": h for name, h in capture.handlers.items()}
        self._generic = [g for hook in self.grpc_hooks for g in hook(self)]
        self._calls: set[Call] = set()
        self._to_start: collections.deque[Call] = collections.deque()
        self._starting = False
        self._conns: set[H2Connection] = set()

    def _served_settings(self) -> list[object]:
        models = self._data_plane.model_registry.get_models().values()
        return [m.settings for m in models if hasattr(m, "settings")]

    async def start(self, max_workers: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await self._loop.create_server(self._connect, sock=self._sock, backlog=2048)
        self._loop.call_later(SWEEP_S, self._sweep)
        logger.info("gRPC V2 on port %s (at most %s calls held)", self._port, self.max_calls)
        await self._stopped.wait()

    def _connect(self) -> H2Connection:
        conn = H2Connection(self)
        conn.over_limit = len(self._conns) >= self.limits.max_connections  # closed once made
        self._conns.add(conn)
        return conn

    def _sweep(self) -> None:
        """Once a second: drop connections that never finished their preface in the header
        timeout, and refuse calls whose body did not arrive within the body timeout."""
        now = time.monotonic()
        for conn in list(self._conns):
            if not conn.preface_seen and now - conn.opened > self.limits.header_timeout_s:
                conn.close(h2.PROTOCOL_ERROR, "no HTTP/2 preface within KBUNDLE_HEADER_TIMEOUT_S")
            for call in list(conn.calls.values()):
                late = now - call.started > self.limits.body_timeout_s
                if late and not call.request_complete and call.task is None:
                    conn.fail(call, DEADLINE_EXCEEDED, SLOW_BODY)
        if not self._stopped.is_set():
            self._loop.call_later(SWEEP_S, self._sweep)

    def closed(self, conn: H2Connection) -> None:
        self._conns.discard(conn)

    # -- admission (headers received, body not yet read) -----------------------------------------
    def admit(self, call: Call) -> Refusal | None:
        if call.header_count > self.limits.max_headers:
            message = f"{call.header_count} header fields, over KBUNDLE_MAX_HEADERS"
            return RESOURCE_EXHAUSTED, f"{message} ({self.limits.max_headers})", b""
        if self.max_calls is not None and len(self._calls) >= self.max_calls:
            held = f"{len(self._calls)} calls held, the limit (KBUNDLE_GRPC_MAX_CALLS)"
            return RESOURCE_EXHAUSTED, f"server busy: {held}; retry after 1 s", RETRY_PUSHBACK
        if call.path == MODEL_INFER:
            return self._admit_infer(call)
        if self._handler(call) is None:
            method = call.path.decode("latin-1")
            return UNIMPLEMENTED, f"method {method} is not served here", b""
        return None

    def _admit_infer(self, call: Call) -> Refusal | None:
        """The model's queue, asked before the body is read (the core holds the call's place
        until its task queues it). The name is in the body, so this is for the common one-model
        server; with several, a full queue is found after parsing."""
        models = self._data_plane.model_registry.get_models()
        if len(models) != 1:
            return None
        try:
            call.admitted = self.core.admit(next(iter(models)), CallContext(protocol="grpc"))
        except KBundleError as exc:
            return _refusal(exc)
        return None

    # -- running calls -----------------------------------------------------------------------------
    def dispatch(self, call: Call) -> None:
        self._calls.add(call)
        self._to_start.append(call)
        if not self._starting:
            self._starting = True
            self._loop.call_soon(self._start_some)
        if call.deadline is not None:
            call.timer = self._loop.call_at(
                self._loop.time() + call.deadline - time.monotonic() + GRPC_DEADLINE_GRACE_S,
                self._expire,
                call,
            )

    def _start_some(self) -> None:
        """Start the next few calls; the rest wait a turn (the loop reads its sockets first)."""
        for _ in range(min(STARTS_PER_TURN, len(self._to_start))):
            call = self._to_start.popleft()
            if call.answered or call.cancelled:  # expired or cancelled while waiting to start
                self._finished(call)
                continue
            call.task = self._loop.create_task(self._run(call))
        self._starting = bool(self._to_start)
        if self._starting:
            self._loop.call_soon(self._start_some)

    def _expire(self, call: Call) -> None:
        task = call.task  # None: still waiting to start
        if task is not None:
            if task.done():
                return
            task.cancel()
        call.conn.fail(call, DEADLINE_EXCEEDED, "Deadline Exceeded")

    def settled(self, call: Call) -> None:
        if call.admitted is not None:  # answered or cancelled before its task queued it
            call.admitted.release()

    async def _run(self, call: Call) -> None:
        try:
            if call.path == MODEL_INFER:
                answer = await self._model_infer(call)
            else:
                answer = await self._unary(call)
            call.conn.respond(call, answer)
        except asyncio.CancelledError:
            pass  # the client left or the deadline passed: already answered or nobody to answer
        except AbortError as exc:
            call.conn.fail(call, exc.code.value[0], exc.details)
        except Exception as exc:  # every error through the one status table
            if not isinstance(exc, KBundleError):
                log_if_internal(exc, call.path.decode("latin-1"))
            call.conn.fail(call, *_refusal(as_error(exc)))
        finally:
            self._finished(call)

    def _finished(self, call: Call) -> None:
        self.settled(call)
        self._calls.discard(call)
        if call.timer is not None:  # long deadlines must not keep a timer per finished call
            call.timer.cancel()

    async def _model_infer(self, call: Call) -> bytes:
        try:
            request = pb.ModelInferRequest.FromString(call.message)
        except DecodeError as exc:
            message = f"ModelInferRequest does not parse: {exc}"
            raise KBundleError(message, Status.INVALID_ARGUMENT) from None
        context = CallContext(protocol="grpc", on_cancel=call.add_callback, client_gone=call.gone)
        decode = grpc_decoder(request, call)
        response = await self.core.infer(
            request.model_name, decode, context, encode_response, call.admitted
        )
        return response.SerializeToString()

    def _handler(self, call: Call) -> grpc.RpcMethodHandler | None:
        method = call.path.decode("latin-1")
        found = self._handlers.get(method)
        for generic in self._generic if found is None else ():
            found = generic.service(CallDetails(method, call.metadata))
            if found is not None:
                self._handlers[method] = found
                break
        return found if found is not None and found.unary_unary is not None else None

    async def _unary(self, call: Call) -> bytes:
        handler = self._handler(call)
        parse = handler.request_deserializer or (lambda raw: raw)
        try:
            request = parse(call.message)
        except DecodeError as exc:
            message = f"the request message does not parse: {exc}"
            raise KBundleError(message, Status.INVALID_ARGUMENT) from None
        if inspect.iscoroutinefunction(handler.unary_unary):
            response = await handler.unary_unary(request, call)
        else:  # a sync behavior may block: off the loop
            response = await self._loop.run_in_executor(None, handler.unary_unary, request, call)
        serialize = handler.response_serializer or (lambda message: message)
        return serialize(response)

    # -- drain --------------------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """Stop listening, tell every client (GOAWAY), answer the calls already received."""
        if getattr(self, "_server", None) is None:
            return
        self._server.close()
        for conn in list(self._conns):
            conn.go_away()
        deadline = time.monotonic() + timeout_s
        while self._calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for call in list(self._calls):
            call.cancel_by_client()
        for conn in list(self._conns):
            conn.close_gently()
        # until the clients have closed their side (each at most LINGER_S): a process that
        # exits with their late frames unread resets connections whose answers are in flight
        linger = time.monotonic() + H2Connection.LINGER_S
        while self._conns and time.monotonic() < linger:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.close()
        self._stopped.set()


def _refusal(error: KBundleError) -> Refusal:
    code = grpc_code(error.status).value[0]
    extra = RETRY_PUSHBACK if error.status is Status.RESOURCE_EXHAUSTED else b""
    return code, error.message, extra
