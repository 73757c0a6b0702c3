"""The lean gRPC server (kbundle.serving.grpc_lean, the predictor's default) at the wire: large
tensors both ways through HTTP/2 flow control, gzip requests, many calls on one connection,
limits and malformed input answered with a status, never a dead server. Reference clients:
tritonclient.grpc and grpcio; raw sockets where a client must misbehave on purpose."""

from __future__ import annotations

import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from lifecycle_helpers import METHOD, MODEL, grpc_message, grpc_rows, infer_call
from procs import start_predictor
from slow_model import WIDTH, build_slow_model, request_rows

BIG_ROWS = 2048  # 4 MiB each way: many times the client's initial 64 KiB window
LIMIT = 6 * 1024 * 1024
QUEUE = 5  # the short_queue server's max_queue_size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    model_dir = build_slow_model(root / "slow", f"max_batch_size: {BIG_ROWS}\n")
    env = {"KBUNDLE_MAX_REQUEST_BYTES": str(LIMIT)}
    proc = start_predictor(MODEL, model_dir, root / "predictor.log", env=env)
    yield proc
    proc.stop()


def triton_infer(url: str, x: np.ndarray, **kwargs) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor], **kwargs).as_numpy("y")


def test_the_server_log_names_the_lean_server(server):
    assert "at most" in server.log() and "calls held" in server.log()


def test_4_mib_each_way_through_flow_control(server):
    x = request_rows(1, BIG_ROWS)
    np.testing.assert_allclose(triton_infer(server.grpc_url, x), x, rtol=1e-5)


def test_gzip_and_deflate_requests_are_read(server):
    x = request_rows(2, 64)
    for algorithm in ("gzip", "deflate"):
        y = triton_infer(server.grpc_url, x, compression_algorithm=algorithm)
        np.testing.assert_allclose(y, x, rtol=1e-5)


def test_64_concurrent_calls_on_one_connection_get_their_own_rows(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = infer_call(channel)
        futures = [call.future(grpc_message(tag, 8), timeout=60) for tag in range(64)]
        for tag, future in enumerate(futures):
            np.testing.assert_allclose(grpc_rows(future.result()), request_rows(tag, 8))


def test_a_message_over_the_limit_is_resource_exhausted_naming_the_setting(server):
    rows = LIMIT // (WIDTH * 4) + 16
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            infer_call(channel)(grpc_message(3, rows), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in caught.value.details()
    assert "KBUNDLE_MAX_REQUEST_BYTES" in caught.value.details()
    x = request_rows(4, 4)  # and the server goes on
    np.testing.assert_allclose(triton_infer(server.grpc_url, x), x, rtol=1e-5)


def test_bytes_that_are_not_a_ModelInferRequest_are_invalid_argument(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        raw = channel.unary_unary(METHOD)  # no serializer: bytes as given
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in caught.value.details()


def test_an_unknown_method_is_unimplemented(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/inference.GRPCInferenceService/Nope")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Nope" in caught.value.details()


def _raw_exchange(url: str, payload: bytes) -> bytes:
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # a server closing with our bytes unread: what came first
            pass
    return received


def test_an_http1_request_on_the_grpc_port_is_closed_and_the_server_goes_on(server):
    received = _raw_exchange(server.grpc_url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"this is a gRPC port" in received  # the GOAWAY's debug data, then closed
    x = request_rows(5, 4)
    np.testing.assert_allclose(triton_infer(server.grpc_url, x), x, rtol=1e-5)


def test_an_oversized_frame_gets_goaway_and_the_server_goes_on(server):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">BHBBI", 0, 0, 4, 0, 0)
    huge = struct.pack(">BHBBI", 0xFF, 0xFFFF, 0, 0, 1)  # a 16 MiB DATA frame header
    received = _raw_exchange(server.grpc_url, preface + huge)
    goaway = struct.pack(">BBI", 7, 0, 0)[0:1]  # type byte 7 follows the 3 length bytes
    assert goaway in received and b"frame of" in received
    with ThreadPoolExecutor(4) as pool:  # and the server still serves several at once
        results = pool.map(lambda t: triton_infer(server.grpc_url, request_rows(t, 2)), range(4))
        for tag, y in enumerate(results):
            np.testing.assert_allclose(y, request_rows(tag, 2), rtol=1e-5)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A second predictor with tight connection limits (they are per process)."""
    root = tmp_path_factory.mktemp("lean-limits")
    model_dir = build_slow_model(root / "slow", "max_batch_size: 8\n")
    env = {"KBUNDLE_MAX_CONNECTIONS": "2", "KBUNDLE_HEADER_TIMEOUT_S": "1"}
    proc = start_predictor(MODEL, model_dir, root / "predictor.log", env=env)
    yield proc
    proc.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_a_client_that_never_sends_its_preface_is_dropped(limited):
    with _connect(limited.grpc_url) as sock:
        received = b""
        while chunk := sock.recv(65536):  # ends when the server closes: within the sweep
            received += chunk
    assert b"no HTTP/2 preface within KBUNDLE_HEADER_TIMEOUT_S" in received


def test_one_connection_over_the_cap_gets_goaway_naming_the_setting(limited):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">BHBBI", 0, 0, 4, 0, 0)
    held = [_connect(limited.grpc_url) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(preface)
            sock.recv(65536)  # the server's SETTINGS: the connection is counted
        received = _raw_exchange(limited.grpc_url, preface)
        assert b"too many connections (KBUNDLE_MAX_CONNECTIONS)" in received
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def short_queue(tmp_path_factory):
    """A predictor whose queue holds QUEUE requests (its own: the connection cap of `limited`
    would refuse a new connection while the last test's closes are still being read)."""
    root = tmp_path_factory.mktemp("lean-queue")
    model_dir = build_slow_model(root / "slow", f"max_batch_size: 8\nmax_queue_size: {QUEUE}\n")
    proc = start_predictor(MODEL, model_dir, root / "predictor.log")
    yield proc
    proc.stop()


def _burst(url: str, calls: int, body: bytes) -> dict[int, int]:
    """`calls` ModelInfer calls in one write on one connection, with hpack (the reference
    decoder) for the answers; {stream: grpc-status} once every call has its status."""
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", METHOD)]
    headers += [(":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">BHBBI", 0, 0, 4, 0, 0)
    message = struct.pack(">BI", 0, len(body)) + body
    for stream in range(1, 2 * calls, 2):
        block = encoder.encode(headers)
        data += struct.pack(">BHBBI", 0, len(block), 1, 4, stream) + block  # HEADERS, END_HEADERS
        data += struct.pack(">BHBBI", 0, len(message), 0, 1, stream) + message  # DATA, END_STREAM
    statuses: dict[int, int] = {}
    with _connect(url) as sock:
        sock.sendall(data)
        buffer = b""
        while len(statuses) < calls:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed with {len(statuses)} of {calls} answered"
            buffer += chunk
            while len(buffer) >= 9:
                high, low, kind, _, stream = struct.unpack(">BHBBI", buffer[:9])
                length = (high << 16) | low
                if len(buffer) < 9 + length:
                    break
                payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                if kind == 1:  # HEADERS: every one is decoded, to keep the table in step
                    fields = dict(decoder.decode(payload))
                    if "grpc-status" in fields:
                        statuses[stream] = int(fields["grpc-status"])
    return statuses


def test_a_burst_in_one_read_is_refused_at_the_headers_past_the_queue_room(short_queue):
    """40 calls arrive in one read; the queue holds QUEUE. Calls let in are counted toward the
    queue from their headers on, so exactly QUEUE get in (their bodies do not parse: INVALID
    ARGUMENT) and the rest are refused at their headers (RESOURCE_EXHAUSTED) with no decode;
    counted only once queued, all 40 would get in and be decoded."""
    statuses = _burst(short_queue.grpc_url, 40, b"\xff\xff\xff")
    codes = [statuses[stream] for stream in sorted(statuses)]
    invalid, exhausted = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codes == [invalid.value[0]] * QUEUE + [exhausted.value[0]] * (40 - QUEUE)
    x = request_rows(3, 2)  # and the queue has room again once they are answered
    np.testing.assert_allclose(triton_infer(short_queue.grpc_url, x), x, rtol=1e-5)
