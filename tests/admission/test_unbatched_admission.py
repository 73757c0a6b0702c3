"""Admission control without a batcher (`max_batch_size: 0`), both protocols: the same bounded
queue, deadlines and disconnect drops as the batched path (issue 12 item 2).

Engine calls are read from `kbundle_batch_size` (one observation per engine call on this path
too) and starts from `kbundle_queue_wait_seconds`, as in test_predictor_admission.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from admission_helpers import (
    MODEL,
    engine_calls,
    fill_queue,
    grpc_burst,
    in_background,
    metric,
    rest_infer,
    rows,
    send_and_leave,
    start_blocker,
)
from procs import start_predictor
from queue_model import build_slow_model
from tritonclient.utils import InferenceServerException

CONFIG = "max_batch_size: 0\nintra_op_threads: 1\nwarmup: false\nmax_queue_size: 2\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("unbatched"))
    proc = start_predictor(MODEL, build_slow_model(root / MODEL, CONFIG), root / "server.log")
    yield proc
    proc.stop()


def dropped(url: str, reason: str) -> float:
    return metric(url, "kbundle_requests_dropped_total", reason=reason)


def test_full_queue_is_429_and_resource_exhausted(server):
    url, answered = server.http_url, []
    threads = fill_queue(url, rows(8192), answered)
    rest = rest_infer(url, rows(1))
    [grpc_error] = grpc_burst(server.grpc_url, [rows(1)])
    for thread in threads:
        thread.join(120)
    assert rest.status_code == 429, rest.text
    assert int(rest.headers["Retry-After"]) >= 1 and "max_queue_size" in rest.json()["error"]
    assert isinstance(grpc_error, InferenceServerException), grpc_error
    assert grpc_error.status() == "StatusCode.RESOURCE_EXHAUSTED", grpc_error
    assert sorted(r.status_code for r in answered) == [200] * 3 + [429] * 2


def test_deadlines_drop_queued_requests_unrun_on_both_protocols(server):
    url = server.http_url
    calls, rows_run = engine_calls(url)
    before = dropped(url, "deadline")
    blocker = start_blocker(url)
    rest = rest_infer(url, rows(64), {"timeout": 50_000})
    header = rest_infer(url, rows(64), headers={"x-request-timeout-ms": "50"})
    [grpc_error] = grpc_burst(server.grpc_url, [rows(64)], timeout=50_000)
    blocker.join(120)
    assert (rest.status_code, header.status_code) == (504, 504), (rest.text, header.text)
    assert "deadline" in rest.json()["error"]
    assert grpc_error.status() == "StatusCode.DEADLINE_EXCEEDED", grpc_error
    assert engine_calls(url) == (calls + 1, rows_run + 4096)  # the blocker alone ran
    assert dropped(url, "deadline") - before == 3


def test_grpc_client_deadline_drops_queued_calls_unrun(server):
    url = server.http_url
    calls, _ = engine_calls(url)
    blocker = start_blocker(url)
    results = grpc_burst(server.grpc_url, [rows(64)] * 2, client_timeout=0.05)
    blocker.join(120)
    assert all(r.status() == "StatusCode.DEADLINE_EXCEEDED" for r in results), results
    time.sleep(0.2)
    assert engine_calls(url)[0] - calls == 1


def test_rest_clients_that_disconnect_while_queued_are_dropped_unrun(server):
    url = server.http_url
    calls, rows_run = engine_calls(url)
    gone = dropped(url, "disconnected")
    blocker = start_blocker(url)
    leavers = [in_background(send_and_leave, url, rows(64, s), 0.03) for s in range(2)]
    for thread in leavers:
        thread.join(30)
    time.sleep(0.1)  # the server notices the closed sockets while the blocker still runs
    blocker.join(120)
    time.sleep(0.3)
    assert engine_calls(url) == (calls + 1, rows_run + 4096)
    assert dropped(url, "disconnected") - gone == 2
