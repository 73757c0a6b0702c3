"""kserve's ModelNotReady / NotImplementedError reach gRPC clients with the right code (stock 0.21
sends UNKNOWN "AttributeError: ... no attribute 'reason'"). Real servers on 127.0.0.1: grpc.aio
with StatusInterceptor, and the sync server with async handlers bridged to a loop (what
KbundleGRPCServer serves, kbundle.serving.grpc_sync)."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc
import pytest
from kserve.errors import InferenceError, ModelNotReady

from kbundle.errors import InvalidRequest
from kbundle.serving.grpc_sync import LoopBridge
from kbundle.serving.v2_grpc import StatusInterceptor

RAISES = {
    "not_ready": (
        ModelNotReady("digits"),
        grpc.StatusCode.UNAVAILABLE,
        "Model with name digits is not ready.",
    ),
    "not_implemented": (
        NotImplementedError("versions are not served"),
        grpc.StatusCode.UNIMPLEMENTED,
        "versions are not served",
    ),
    "inference_error": (
        InferenceError("engine blew up"),
        grpc.StatusCode.INTERNAL,
        "engine blew up",
    ),
    "invalid": (
        InvalidRequest("model 'm' input 'x': bad"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'm' input 'x': bad",
    ),
    "unknown": (KeyError("secret internals"), grpc.StatusCode.INTERNAL, "internal server error"),
}


async def call_all() -> dict[str, tuple[grpc.StatusCode, str]]:
    async def handler(request: bytes, context) -> bytes:
        raise RAISES[request.decode()][0]

    server = grpc.aio.server(interceptors=(StatusInterceptor(),))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Svc", {"Call": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    results = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Svc/Call")
            for key in RAISES:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(key.encode(), timeout=5)
                results[key] = (err.value.code(), err.value.details())
    finally:
        await server.stop(None)
    return results


def test_every_exception_maps_to_its_code_and_message():
    results = asyncio.run(call_all())
    for key, (_, code, message) in RAISES.items():
        assert results[key] == (code, message), key


def test_bridged_sync_server_maps_every_exception_the_same_way():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def handler(request: bytes, context) -> bytes:
        if request == b"ok":
            return b"fine"
        raise RAISES[request.decode()][0]

    bridge = LoopBridge(loop)
    method = bridge.handler(grpc.unary_unary_rpc_method_handler(handler), "Call")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Svc", {"Call": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Svc/Call")
            assert call(b"ok", timeout=5) == b"fine"
            for key, (_, code, message) in RAISES.items():
                with pytest.raises(grpc.RpcError) as err:
                    call(key.encode(), timeout=5)
                assert (err.value.code(), err.value.details()) == (code, message), key
    finally:
        server.stop(None).wait()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
