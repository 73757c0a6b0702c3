"""Admission control on the real predictor, both protocols (issue 12 items 1-3).

The slow model makes an engine call of 1,024 rows take ~0.1-0.3 s on one thread, so requests
really queue. Every test runs twice: with the batcher (`max_batch_size: 1` runs each request
alone, so engine calls count requests) and with batching off (`max_batch_size: 0`: requests wait
for the engine instance), which must have the same bounds, deadlines and errors. Engine calls
and rows are read from `kbundle_batch_size`, observed on both paths.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from admission_helpers import (
    MODEL,
    concurrently,
    cost_of_leavers,
    engine_calls,
    fill_queue,
    grpc_burst,
    metric,
    rest_body,
    rest_infer,
    rest_leavers,
    rest_output,
    rows,
    start_blocker,
)
from procs import start_predictor
from queue_model import build_slow_model, expected
from raw_http import CHUNK, read_response
from tritonclient.utils import InferenceServerException

BASE = "max_batch_delay_ms: 0\nintra_op_threads: 1\nwarmup: false\n"
QUEUE = BASE + "max_queue_size: 2\nmax_request_rows: 16384\n"
DEADLINE = BASE + "max_queue_size: 64\nmax_request_rows: 0\n"
PATHS = {"batched": "max_batch_size: 1\n", "unbatched": "max_batch_size: 0\n"}


def _server(tmp_path_factory, label: str, config: str):
    root = Path(tmp_path_factory.mktemp(label))
    model_dir = build_slow_model(root / MODEL, config)
    return start_predictor(MODEL, model_dir, root / "server.log")


@pytest.fixture(scope="module", params=list(PATHS))
def queue_server(tmp_path_factory, request):
    proc = _server(tmp_path_factory, f"queue-{request.param}", PATHS[request.param] + QUEUE)
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=list(PATHS))
def deadline_server(tmp_path_factory, request):
    proc = _server(tmp_path_factory, f"deadline-{request.param}", PATHS[request.param] + DEADLINE)
    yield proc
    proc.stop()


# -- rows ------------------------------------------------------------------------------------
def test_rest_rows_over_the_limit_is_400_naming_it(queue_server):
    resp = rest_infer(queue_server.http_url, rows(16385))
    assert resp.status_code == 400, resp.text
    assert "16385 rows" in resp.text and "max_request_rows" in resp.text and "16384" in resp.text


def test_grpc_rows_over_the_limit_is_invalid_argument_naming_it(queue_server):
    [error] = grpc_burst(queue_server.grpc_url, [rows(16385)])
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "max_request_rows" in error.message() and "16384" in error.message()


# -- a full queue ----------------------------------------------------------------------------
def test_rest_full_queue_is_429_with_retry_after_at_once(queue_server):
    url, x, answered = queue_server.http_url, rows(8), []
    threads = fill_queue(url, x, answered)
    refusals = []
    for _ in range(5):
        started = time.perf_counter()
        resp = rest_infer(url, rows(1))
        refusals.append((resp, time.perf_counter() - started))
    for thread in threads:
        thread.join(120)
    for resp, seconds in refusals:
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["Retry-After"]) >= 1
        assert "max_queue_size" in resp.json()["error"]
        assert seconds < 0.25, seconds  # at once: no queue wait, no engine time (~0.2-1 s)
    assert sorted(r.status_code for r in answered) == [200] * 3 + [429] * 2
    for resp in answered:  # the blocker and the two queued: each its own rows (a seed-0 prefix)
        if resp.status_code == 200:
            got = rest_output(resp)
            np.testing.assert_allclose(got, expected(rows(len(got))), atol=1e-5)
    assert metric(url, "kbundle_requests_dropped_total", reason="queue_full") >= 7


def test_grpc_full_queue_is_resource_exhausted_at_once(queue_server):
    answered: list = []
    threads = fill_queue(queue_server.http_url, rows(8), answered)
    started = time.perf_counter()
    refused = grpc_burst(queue_server.grpc_url, [rows(1)] * 5)
    seconds = time.perf_counter() - started
    for thread in threads:
        thread.join(120)
    for error in refused:
        assert isinstance(error, InferenceServerException), error
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
        assert "max_queue_size" in error.message()
    assert seconds < 0.25, seconds
    assert sorted(r.status_code for r in answered) == [200] * 3 + [429] * 2


def test_full_queue_refuses_before_decoding_on_both_protocols(queue_server):
    """While the queue is full, requests that decoding would refuse with 400 / INVALID_ARGUMENT
    (a 16 MB REST body that is no V2 request; a gRPC tensor the model does not have) are
    refused 429 / RESOURCE_EXHAUSTED: admission ran first, the body was never decoded."""
    url, answered = queue_server.http_url, []
    threads = fill_queue(url, rows(8), answered)
    garbage = b"{" + b"7" * (16 * 1024 * 1024)
    rest = requests.post(f"http://{url}/v2/models/{MODEL}/infer", data=garbage, timeout=60)
    client = grpcclient.InferenceServerClient(queue_server.grpc_url)
    wrong = grpcclient.InferInput("no_such_input", [1, 3], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 3), np.int32))
    with pytest.raises(InferenceServerException) as grpc_error:
        client.infer(MODEL, [wrong])
    client.close()
    for thread in threads:
        thread.join(120)
    assert rest.status_code == 429, rest.text[:300]
    assert "max_queue_size" in rest.json()["error"] and "Retry-After" in rest.headers
    assert grpc_error.value.status() == "StatusCode.RESOURCE_EXHAUSTED", grpc_error.value
    # the same requests with room in the queue: refused by the decoder, naming the fault
    assert requests.post(f"http://{url}/v2/models/{MODEL}/infer", data=garbage).status_code == 400


def test_rest_full_queue_is_refused_before_the_body_is_sent(queue_server):
    """A 48 MB body announced, not one byte of it sent: with the queue full the 429 comes at
    once (before, it waited for a body that never came). The connection stays usable: the body
    sent afterwards is skipped and the next request on it is answered."""
    url, answered = queue_server.http_url, []
    threads = fill_queue(url, rows(8), answered)
    host, port = url.split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {url}\r\n"
        sock.sendall(f"{head}Content-Length: {len(CHUNK) * 48}\r\n\r\n".encode())
        status, response = read_response(sock, timeout=5)
        for _ in range(48):
            sock.sendall(CHUNK)
        sock.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {url}\r\n\r\n".encode())
        after, _ = read_response(sock, timeout=10)
    for thread in threads:
        thread.join(120)
    assert status == 429, response[:300]
    assert b"max_queue_size" in response and b"retry-after" in response.lower()
    assert after == 200


# -- deadlines ---------------------------------------------------------------------------------
def test_rest_request_past_its_timeout_parameter_never_reaches_the_engine(deadline_server):
    url = deadline_server.http_url
    calls, rows_run = engine_calls(url)
    blocker = start_blocker(url)
    late = concurrently(lambda seed: rest_infer(url, rows(64, seed), {"timeout": 50_000}), 3)
    blocker.join(120)
    assert [r.status_code for r in late] == [504] * 3, [r.text for r in late]
    assert "deadline" in late[0].json()["error"]
    after_calls, after_rows = engine_calls(url)
    assert (after_calls - calls, after_rows - rows_run) == (1, 4096)


def test_rest_timeout_header_is_honoured_too(deadline_server):
    url = deadline_server.http_url
    calls, _ = engine_calls(url)
    blocker = start_blocker(url)
    late = rest_infer(url, rows(64), headers={"x-request-timeout-ms": "50"})
    blocker.join(120)
    assert late.status_code == 504, late.text
    assert engine_calls(url)[0] - calls == 1


def test_rest_timeout_counts_from_the_request_head_not_the_end_of_its_body(deadline_server):
    """The head (with a 200 ms timeout) now, the body 0.5 s later, the engine idle: the budget
    went on the slow body, so 504 and no engine call; counted from after the decode, it ran."""
    url = deadline_server.http_url
    calls, _ = engine_calls(url)
    body, headers = rest_body(rows(8), None)
    headers = {**headers, "x-request-timeout-ms": "200", "content-length": str(len(body))}
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: x\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        time.sleep(0.5)
        sock.sendall(body)
        status, response = read_response(sock)
    assert status == 504, response[:300]
    assert b"deadline" in response
    assert engine_calls(url)[0] - calls == 0
    assert rest_infer(url, rows(8)).status_code == 200  # and the next request runs


def test_grpc_request_past_its_timeout_never_reaches_the_engine(deadline_server):
    url = deadline_server.http_url
    calls, rows_run = engine_calls(url)
    dropped = metric(url, "kbundle_requests_dropped_total", reason="deadline")
    blocker = start_blocker(url, lambda: grpc_burst(deadline_server.grpc_url, [rows(4096)]))
    results = grpc_burst(deadline_server.grpc_url, [rows(64)] * 3, timeout=50_000)
    blocker.join(120)
    for error in results:
        assert isinstance(error, InferenceServerException)
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
    after_calls, after_rows = engine_calls(url)
    assert (after_calls - calls, after_rows - rows_run) == (1, 4096)
    assert metric(url, "kbundle_requests_dropped_total", reason="deadline") - dropped == 3


def test_grpc_client_deadline_drops_queued_calls_unrun(deadline_server):
    url = deadline_server.http_url
    calls, _ = engine_calls(url)
    blocker = start_blocker(url, lambda: grpc_burst(deadline_server.grpc_url, [rows(4096)]))
    results = grpc_burst(deadline_server.grpc_url, [rows(64)] * 5, client_timeout=0.03)
    blocker.join(120)
    assert all(r.status() == "StatusCode.DEADLINE_EXCEEDED" for r in results), results
    time.sleep(0.2)
    assert engine_calls(url)[0] - calls == 1


def test_rest_clients_that_disconnect_while_queued_cost_the_engine_nothing(deadline_server):
    url = deadline_server.http_url
    ran, gone = cost_of_leavers(url, lambda: rest_leavers(url), 4096)
    assert ran <= 4096 + 2 * 64, ran  # the blocker, plus at most a small in-flight share
    assert gone >= 18
