"""Admission under `--workers 2`: the queue is the engine owner's, the clients are the front
ends'. A REST client that disconnects, a gRPC call that is cancelled or whose deadline passes
while queued in the owner costs the engine nothing (counted like the single process: dropped,
reason disconnected / deadline); a full owner queue is refused by the worker before it reads or
decodes the body (429 + Retry-After / RESOURCE_EXHAUSTED), the owner's check staying the rule.

The slow model with `max_batch_size: 1` makes engine calls count requests; a 16,384-row blocker
keeps the engine busy for seconds, so every other call of a test is queued behind it. Engine calls and rows come from the owner's
`kbundle_batch_size`, read through any worker's /metrics."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from admission_helpers import (
    MODEL,
    cost_of_leavers,
    engine_calls,
    fill_queue,
    grpc_burst,
    metric,
    rest_infer,
    rest_leavers,
    start_blocker,
)
from admission_helpers import rows as make_rows
from procs import start_predictor, wait_until
from queue_model import build_slow_model
from raw_http import CHUNK, read_response
from tritonclient.utils import InferenceServerException

BASE = "max_batch_size: 1\nmax_batch_delay_ms: 0\nintra_op_threads: 1\nwarmup: false\n"
DROPPED = "kbundle_requests_dropped_total"
CONFIGS = {
    "deadline": "max_queue_size: 64\nmax_request_rows: 0\n",
    "queue": "max_queue_size: 2\nmax_request_rows: 16384\n",
}
BLOCKER = 16384  # rows: seconds of engine time, even on a fast machine


def start_long_blocker(url: str):
    return start_blocker(url, lambda: rest_infer(url, make_rows(BLOCKER)))


def _server(tmp_path_factory, label: str, config: str):
    root = Path(tmp_path_factory.mktemp(label))
    model_dir = build_slow_model(root / MODEL, config)
    server = start_predictor(MODEL, model_dir, root / "server.log", "--workers", "2")
    # REST is served from the shared socket at once; wait for both workers' gRPC servers too.
    both = lambda: server.log().count("[worker]: gRPC V2 on port") >= 2  # noqa: E731
    wait_until(both, 60, "workers serving gRPC", server.proc, server.log_path)
    return server


def _serving(tmp_path_factory, label: str):
    server = _server(tmp_path_factory, f"workers-{label}", BASE + CONFIGS[label])
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory):
    yield from _serving(tmp_path_factory, "deadline")


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory):
    yield from _serving(tmp_path_factory, "queue")


# -- a client that leaves ------------------------------------------------------------------------
def test_rest_clients_that_disconnect_while_queued_in_the_owner_cost_the_engine_nothing(
    deadline_server,
):
    url = deadline_server.http_url
    ran, gone = cost_of_leavers(url, lambda: rest_leavers(url), BLOCKER)
    assert ran <= BLOCKER + 2 * 64, ran  # the blocker, plus at most a small in-flight share
    assert gone >= 18


def cancel_grpc_calls(url: str, count: int) -> None:
    """`count` gRPC calls of 64 rows, cancelled by their client 0.2 s later (queued by then)."""
    client = grpcclient.InferenceServerClient(url)
    contexts = []
    for seed in range(count):
        tensor = grpcclient.InferInput("x", [64, 256], "FP32")
        tensor.set_data_from_numpy(make_rows(64, seed))
        contexts.append(client.async_infer(MODEL, [tensor], callback=lambda *_: None))
    time.sleep(0.2)
    for context in contexts:
        context.cancel()
    client.close()


def test_grpc_calls_cancelled_while_queued_in_the_owner_never_run(deadline_server):
    url = deadline_server.http_url
    leave = lambda: cancel_grpc_calls(deadline_server.grpc_url, 12)  # noqa: E731
    ran, gone = cost_of_leavers(url, leave, BLOCKER)
    assert ran <= BLOCKER + 2 * 64, ran
    assert gone >= 10


def test_the_request_timeout_travels_to_the_owner_which_drops_expired_calls_unrun(
    deadline_server,
):
    """The V2 `timeout` parameter (50 ms): the client stays, the owner's batcher drops the
    calls at their deadline (reason deadline) and the worker answers DEADLINE_EXCEEDED."""
    url = deadline_server.http_url
    calls, rows_run = engine_calls(url)
    dropped = metric(url, DROPPED, reason="deadline")
    blocker = start_long_blocker(url)
    results = grpc_burst(deadline_server.grpc_url, [make_rows(64)] * 3, timeout=50_000)
    for error in results:  # answered at their deadline, not after the blocker
        assert isinstance(error, InferenceServerException), error
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
    assert metric(url, DROPPED, reason="deadline") - dropped == 3
    blocker.join(120)
    time.sleep(0.3)
    after_calls, after_rows = engine_calls(url)
    assert (after_calls - calls, after_rows - rows_run) == (1, BLOCKER)


def test_grpc_client_deadlines_drop_calls_queued_in_the_owner_unrun(deadline_server):
    """A client deadline ends the call in the worker, which cancels it in the owner; either that
    cancel or the deadline (which travels too) drops it first."""
    url = deadline_server.http_url
    calls, rows_run = engine_calls(url)
    reasons = ("deadline", "disconnected")
    before = sum(metric(url, DROPPED, reason=r) for r in reasons)
    blocker = start_long_blocker(url)
    results = grpc_burst(deadline_server.grpc_url, [make_rows(64)] * 5, client_timeout=0.5)
    blocker.join(120)
    assert all(r.status() == "StatusCode.DEADLINE_EXCEEDED" for r in results), results
    time.sleep(0.3)
    after_calls, after_rows = engine_calls(url)
    assert (after_calls - calls, after_rows - rows_run) == (1, BLOCKER)
    assert sum(metric(url, DROPPED, reason=r) for r in reasons) - before == 5


# -- a full owner queue ----------------------------------------------------------------------------
def test_a_full_owner_queue_is_refused_by_the_worker_before_the_body_is_sent(queue_server):
    """48 MB announced, not one byte sent: the worker answers 429 at once (before, it waited for
    the body, decoded it and only the owner refused it)."""
    url, answered = queue_server.http_url, []
    threads = fill_queue(url, make_rows(8), answered)
    host, port = url.split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {url}\r\n"
        sock.sendall(f"{head}Content-Length: {len(CHUNK) * 48}\r\n\r\n".encode())
        status, response = read_response(sock, timeout=5)
    for thread in threads:
        thread.join(120)
    assert status == 429, response[:300]
    assert b"max_queue_size" in response and b"retry-after" in response.lower()


def test_a_full_owner_queue_is_resource_exhausted_before_the_worker_decodes(queue_server):
    """A tensor the model does not have (INVALID_ARGUMENT once decoded) is refused
    RESOURCE_EXHAUSTED while the owner's queue is full: the worker never decoded it."""
    answered: list = []
    threads = fill_queue(queue_server.http_url, make_rows(8), answered)
    client = grpcclient.InferenceServerClient(queue_server.grpc_url)
    wrong = grpcclient.InferInput("no_such_input", [1, 3], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 3), np.int32))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [wrong])
    for thread in threads:
        thread.join(120)
    with pytest.raises(InferenceServerException) as decoded:  # room again: the decoder says
        client.infer(MODEL, [wrong])
    client.close()
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
    assert "max_queue_size" in refused.value.message()
    assert decoded.value.status() == "StatusCode.INVALID_ARGUMENT", decoded.value
    assert sorted(r.status_code for r in answered) == [200] * 3 + [429] * 2
