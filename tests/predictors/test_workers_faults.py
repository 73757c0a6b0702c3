"""`--workers 2` under load and faults, real processes on 127.0.0.1 serving a slow ONNX model (tens
of ms per 64 rows, so requests queue in the engine owner's batcher): requests taken by both
workers share one engine call, SIGTERM with 32 calls in flight answers all of them, an engine
owner killed with SIGKILL turns into 503 / UNAVAILABLE at once and a non-zero exit, and a
/dev/shm too small for the workers is refused at start-up with one line."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from lifecycle_helpers import (
    MODEL,
    expected_rows,
    grpc_message,
    grpc_rows,
    infer_call,
    rest_infer,
)
from metrics_text import total
from procs import drained, free_port, predictor_cmd, run_to_exit
from slow_model import build_slow_model
from test_predictor_drain import signal_and_watch_readiness
from workers_helpers import owner_pid, requests_by_pid, start_workers, worker_pids

CONFIG = "max_batch_size: 2048\nmax_batch_delay_ms: 1\n"
BLOCKER = (
    1536  # rows: ~1 s of engine work on a quiet machine (3 MiB: travels pickled, not in a slot)
)
DRAIN_S = 20.0
ROWS = 64  # 32 calls of 64 rows: seconds of engine work, so most are still queued at the signal


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_slow_model(Path(tmp_path_factory.mktemp("workers-faults")) / MODEL, CONFIG)


@pytest.fixture(scope="module")
def root(model_dir) -> Path:
    return model_dir.parent


@pytest.fixture(scope="module")
def server(root, model_dir):
    proc = start_workers(MODEL, model_dir, root, "--drain_timeout_seconds", str(DRAIN_S))
    yield proc
    proc.stop()


def grpc_one(url: str, tag: int, rows: int) -> np.ndarray:
    """A call on its own channel (its own connection, so the kernel picks the worker)."""
    with grpc.insecure_channel(url) as channel:
        return grpc_rows(infer_call(channel)(grpc_message(tag, rows), timeout=60))


def batch_totals(server) -> tuple[float, float]:
    return (
        total(server.http_url, "kbundle_batch_size_count", model=MODEL),
        total(server.http_url, "kbundle_batch_size_sum", model=MODEL),
    )


def test_requests_taken_by_both_workers_share_one_engine_call(server, root):
    pids = list(worker_pids(server).values())
    served = [requests_by_pid(root / "metrics", pid) for pid in pids]
    batches, rows = batch_totals(server)
    with ThreadPoolExecutor(33) as pool:
        blocker = pool.submit(grpc_one, server.grpc_url, 7, BLOCKER)
        time.sleep(0.15)  # the blocker runs: what follows queues in the owner
        small = [
            pool.submit(grpc_one, server.grpc_url, tag, 1)
            if tag % 2
            else pool.submit(rest_infer, server.http_url, tag, 60, 1)
            for tag in range(32)
        ]
        np.testing.assert_array_equal(blocker.result(), expected_rows(7, BLOCKER))
        for tag, future in enumerate(small):
            got = future.result() if tag % 2 else future.result()[1]
            np.testing.assert_array_equal(got, expected_rows(tag, 1))
    after = [requests_by_pid(root / "metrics", pid) for pid in pids]
    assert all(b > a for a, b in zip(served, after, strict=True)), (served, after)
    # Both workers took some of the 32 small calls, and they ran as ONE engine call: without
    # batching across workers there would be at least one call per worker.
    assert batch_totals(server) == (batches + 2, rows + BLOCKER + 32)


def test_sigterm_with_32_calls_in_flight_on_both_workers_answers_all_and_exits_0(server):
    results: dict[int, object] = {}

    def one(tag: int) -> None:
        if tag % 2:
            results[tag] = grpc_one(server.grpc_url, tag, ROWS)
        else:
            status, rows = rest_infer(server.http_url, tag, 60, ROWS)
            results[tag] = rows if status == 200 else status

    threads = [threading.Thread(target=one, args=(tag,)) for tag in range(32)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # all 32 received, most queued behind the engine
    assert len(results) < 32
    sent, ready = signal_and_watch_readiness(server)
    code, elapsed = drained(server, sent, DRAIN_S + 10, threads, join_s=60)
    assert ready == 503
    assert sorted(results) == list(range(32))
    for tag, rows in results.items():
        np.testing.assert_array_equal(rows, expected_rows(tag, ROWS))
    assert code == 0 and elapsed < DRAIN_S, (code, elapsed, server.log()[-3000:])
    assert "Traceback" not in server.log()


def test_kill_9_of_the_engine_owner_gives_503_on_both_protocols_and_a_nonzero_exit(
    model_dir, tmp_path
):
    server = start_workers(MODEL, model_dir, tmp_path)
    try:
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = infer_call(channel)
            in_flight = [call.future(grpc_message(tag, 256), timeout=60) for tag in range(8)]
            time.sleep(0.3)
            os.kill(owner_pid(server), signal.SIGKILL)
            killed = time.monotonic()
            failed = [f.exception(5) for f in in_flight]
            status, message = rest_infer(server.http_url, 1, 5, 1)
            with pytest.raises(grpc.RpcError) as fresh:
                call(grpc_message(2, 1), timeout=5)
            answered = time.monotonic() - killed
        code = server.proc.wait(15)
    finally:
        server.stop()
    assert status == 503 and "not ready" in message, (status, message)
    assert fresh.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answered < 1.0, answered
    # Calls the owner had accepted fail with UNAVAILABLE too (or were answered before the kill).
    assert all(e is None or e.code() == grpc.StatusCode.UNAVAILABLE for e in failed), failed
    assert code != 0


def test_a_dev_shm_too_small_for_the_workers_is_refused_with_one_line(model_dir):
    ports = ("--http_port", str(free_port()), "--grpc_port", str(free_port()))
    cmd = predictor_cmd(MODEL, model_dir, *ports, "--workers", "2")
    env = {**os.environ, "KBUNDLE_WORKERS_SLOTS": str(1 << 30)}
    result = run_to_exit(cmd, env=env)
    assert result.returncode == 1
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "mount an emptyDir with medium: Memory at /dev/shm" in line
    assert "--workers 2 needs" in line and "Traceback" not in result.stderr
