"""The gRPC ingress: every unary method forwarded as raw bytes to the revision `pick()` chose.

No protobuf is parsed here: a GenericRpcHandler answers any `/service/Method` with a handler
whose (de)serializers are identity, and the upstream call uses the same method path, so the
proxy stays correct for any service the components add. Metadata goes through both ways;
`x-kbundle-revision` is added to the initial metadata (and the trailers on errors).
"""

from __future__ import annotations

import logging
import time

import grpc
from grpc import aio

from kbundle.errors import KBundleError
from kbundle.local.service import LocalService
from kbundle.serving.limits import max_request_bytes
from kbundle.status import from_grpc, is_server_fault

logger = logging.getLogger("kbundle.up")
REVISION_KEY = "x-kbundle-revision"
TAG_KEY = "x-kbundle-tag"
_SKIP_METADATA = {
    "content-type",
    "user-agent",
    "te",
    "grpc-accept-encoding",
    "grpc-encoding",
    "accept-encoding",
}


class ProxyHandler(grpc.GenericRpcHandler):
    def __init__(self, service: LocalService):
        self._local = service

    def service_name(self) -> str | None:  # grpc asks; None = all services
        return None

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method

        async def forward(request: bytes, context: aio.ServicerContext) -> bytes:
            return await self._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)

    async def _forward(self, method: str, request: bytes, context: aio.ServicerContext) -> bytes:
        try:
            runtime = self._local.pick(_tag(context))
        except KBundleError as exc:
            await context.abort(exc.grpc_code, exc.message)
        tag = ((REVISION_KEY, runtime.name),)
        started, code = time.perf_counter(), grpc.StatusCode.OK
        async with runtime.track():
            try:
                await runtime.activate()
                # wait_for_ready: the revision is up (activate), but this channel may still be
                # in reconnect back-off from its previous pod (scaled to zero, restarted), and a
                # call then would fail at once with UNAVAILABLE instead of connecting.
                call = runtime.grpc_channel().unary_unary(method)(
                    request,
                    metadata=_metadata(context),
                    timeout=context.time_remaining(),
                    wait_for_ready=True,
                )
                response = await call
                await context.send_initial_metadata(tuple(await call.initial_metadata()) + tag)
                return response
            except KBundleError as exc:
                code, details = exc.grpc_code, exc.message
            except aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
            finally:
                # The revision's fault or the client's: the one status table decides.
                fault = code != grpc.StatusCode.OK and is_server_fault(from_grpc(code))
                runtime.stats.record(time.perf_counter() - started, fault)
        context.set_trailing_metadata(tag)
        await context.abort(code, details or "")


def _tag(context: aio.ServicerContext) -> str | None:
    for m in context.invocation_metadata() or ():
        if m.key == TAG_KEY:
            return m.value
    return None


def _metadata(context: aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (m.key, m.value)
        for m in (context.invocation_metadata() or ())
        if not m.key.startswith(":") and m.key not in _SKIP_METADATA
    )


def build_server(service: LocalService, host: str, port: int) -> aio.Server:
    """The ingress gRPC server, bound (RuntimeError when the port cannot be had)."""
    server = aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", max_request_bytes()),
        ]
    )
    server.add_generic_rpc_handlers((ProxyHandler(service),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"cannot bind gRPC {host}:{port}")
    return server
