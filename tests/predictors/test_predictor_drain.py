"""SIGTERM drains the predictor on both protocols: readiness false at once, every call already
received answered (queued in gRPC's thread pool, in the batcher, or running), exit 0 within the
drain timeout. Real predictor processes on 127.0.0.1 serving a slow ONNX model (~50 ms/call)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
from lifecycle_helpers import (
    MODEL,
    expected_rows,
    grpc_message,
    grpc_rows,
    http_status,
    infer_call,
    rest_infer,
    start_slow,
)
from procs import drained

CALLS = 32
DRAIN_S = 20.0


def signal_and_watch_readiness(server) -> tuple[float, int]:
    """SIGTERM, then the readiness status read right after it (the REST listener stays up)."""
    server.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    ready_url = f"http://{server.http_url}/v2/models/{MODEL}/ready"
    status = 200
    while status == 200 and time.monotonic() - sent < 1.0:
        status = http_status(ready_url)
    return sent, status


def test_sigterm_with_32_grpc_calls_in_flight_answers_all_and_exits_0(tmp_path):
    # 8 handler threads: most calls wait in gRPC's own pool when the signal comes.
    server = start_slow(
        tmp_path, "--drain_timeout_seconds", str(DRAIN_S), env={"KBUNDLE_GRPC_THREADS": "8"}
    )
    try:
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = infer_call(channel)
            futures = [call.future(grpc_message(tag), timeout=60) for tag in range(CALLS)]
            time.sleep(0.3)  # all 32 received; ~1.6 s of engine work queued
            assert sum(f.done() for f in futures) < CALLS // 2
            sent, ready_status = signal_and_watch_readiness(server)
            results = [grpc_rows(f.result()) for f in futures]
        code, elapsed = drained(server, sent, DRAIN_S + 10)
    finally:
        server.stop()
    assert ready_status == 503
    for tag, rows in enumerate(results):
        np.testing.assert_array_equal(rows, expected_rows(tag))
    assert code == 0 and elapsed < DRAIN_S, (code, elapsed, server.log()[-3000:])
    assert "Traceback" not in server.log()
    assert "cannot schedule new futures" not in server.log()


def test_sigterm_with_32_rest_calls_in_flight_answers_all_and_refuses_new_ones(tmp_path):
    server = start_slow(tmp_path, "--drain_timeout_seconds", str(DRAIN_S))
    results: dict[int, tuple[int, object]] = {}

    def one(tag: int) -> None:
        results[tag] = rest_infer(server.http_url, tag)

    try:
        threads = [threading.Thread(target=one, args=(tag,)) for tag in range(CALLS)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # all 32 received (the threads start and send within this)
        sent, ready_status = signal_and_watch_readiness(server)
        late_status, late_message = rest_infer(server.http_url, 99)
        code, elapsed = drained(server, sent, DRAIN_S + 10, threads, join_s=60)
    finally:
        server.stop()
    assert ready_status == 503
    assert late_status == 503 and "shutting down" in late_message
    assert sorted(results) == list(range(CALLS))
    for tag, (status, rows) in results.items():
        assert status == 200, rows
        np.testing.assert_array_equal(rows, expected_rows(tag))
    assert code == 0 and elapsed < DRAIN_S, (code, elapsed, server.log()[-3000:])
    assert "Traceback" not in server.log()


def test_drain_is_bounded_by_its_timeout(tmp_path):
    """More work in flight than the drain timeout allows: the server still exits 0 in time, and
    the calls it could not finish end with an error status instead of hanging."""
    # 4 x 32 calls on one engine thread: seconds of work even on a fast, quiet machine.
    server = start_slow(tmp_path, "--drain_timeout_seconds", "0.5", "--intra_op_threads", "1")
    try:
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = infer_call(channel)
            futures = [call.future(grpc_message(tag), timeout=60) for tag in range(4 * CALLS)]
            time.sleep(0.3)
            sent, _ = signal_and_watch_readiness(server)
            code = server.proc.wait(10)
            elapsed = time.monotonic() - sent
            unfinished = [f for f in futures if f.exception(10) is not None]
    finally:
        server.stop()
    assert code == 0 and elapsed < 0.5 + 3.0, (code, elapsed)
    assert unfinished, "128 slow calls on one thread cannot finish in a 0.5 s drain"
    assert {f.code() for f in unfinished} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    }
    assert "Traceback" not in server.log()
