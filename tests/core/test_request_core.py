"""One V2 request core: the same request gets the same answer and the same metric labels over
REST and gRPC, and only the core counts requests. Real predictor processes on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from metrics_text import samples, total
from procs import free_port, start_predictor
from tritonclient.utils import InferenceServerException

import kbundle
from kbundle.serving.lifecycle import bind_rest_socket

MODEL = "digits"
REQUESTS = "kbundle_requests_total"
SRC = Path(kbundle.__file__).parent


@pytest.fixture(scope="module")
def server(digits_v1: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("core") / "predictor.log"
    proc = start_predictor(MODEL, digits_v1, log, env={"K_REVISION": "digits-predictor-00007"})
    yield proc
    proc.stop()


def rest_infer(server, model: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def grpc_infer(server, model: str, array: np.ndarray, datatype: str):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    try:
        return client.infer(model, [tensor])
    finally:
        client.close()


def labels_of(server, model: str, outcome: str) -> dict[str, dict[str, str]]:
    """protocol -> the full label set of the request counter for this model and outcome."""
    return {
        labels["protocol"]: labels
        for labels, value in samples(server.http_url, REQUESTS)
        if labels["model"] == model and labels["outcome"] == outcome and value > 0
    }


def test_every_outcome_series_exists_at_zero_before_any_request_lands_in_it(server):
    """Prometheus's increase() counts only what a series gained between scrapes: a server_error
    series born with a burst of errors inside one scrape interval reads as no errors to a canary
    analysis (seen in CI). So the served model's series are there, at 0, from the start."""
    found = {
        (labels["protocol"], labels["outcome"]): value
        for labels, value in samples(server.http_url, REQUESTS)
        if labels["model"] == MODEL
    }
    outcomes = ("ok", "client_error", "server_error", "cancelled", "dropped")
    assert {(p, o) for p in ("rest", "grpc") for o in outcomes} <= set(found), sorted(found)
    assert found["rest", "server_error"] == found["grpc", "server_error"] == 0
    durations = {
        labels["protocol"]
        for labels, _ in samples(server.http_url, "kbundle_request_duration_seconds_count")
        if labels["model"] == MODEL
    }
    assert durations == {"rest", "grpc"}


def test_same_bad_request_gets_same_status_message_and_metric_labels_on_both(server):
    wrong = np.zeros((2, 64), dtype=np.int32)  # the model takes FP32
    status, body = rest_infer(
        server,
        MODEL,
        {"inputs": [{"name": "input", "datatype": "INT32", "shape": [2, 64], "data": [0] * 128}]},
    )
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, MODEL, wrong, "INT32")
    assert status == 400 and caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert body["error"] == caught.value.message()
    assert "expected FP32 [-1, 64], got INT32 [2, 64]" in body["error"]
    by_protocol = labels_of(server, MODEL, "client_error")
    assert set(by_protocol) == {"rest", "grpc"}
    rest, grpc_ = (
        {k: v for k, v in by_protocol[p].items() if k != "protocol"} for p in by_protocol
    )
    assert (
        rest
        == grpc_
        == {
            "model": MODEL,
            "revision": "digits-predictor-00007",
            "outcome": "client_error",
        }
    )
    assert total(server.http_url, REQUESTS, outcome="server_error") == 0


def test_unknown_model_is_counted_under_one_label_on_both_transports(server):
    before = {
        p: total(server.http_url, REQUESTS, model="_unknown", protocol=p) for p in ("rest", "grpc")
    }
    status, body = rest_infer(server, "nope", {"inputs": []})
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, "nope", np.zeros((1, 64), np.float32), "FP32")
    assert status == 404 and caught.value.status() == "StatusCode.NOT_FOUND"
    assert body["error"] == caught.value.message() == "model 'nope' is not served here"
    for protocol in ("rest", "grpc"):
        after = total(server.http_url, REQUESTS, model="_unknown", protocol=protocol)
        assert after == before[protocol] + 1, protocol
    assert total(server.http_url, REQUESTS, model="nope") == 0


def test_latency_histogram_has_the_contract_buckets(server):
    grpc_infer(server, MODEL, np.zeros((1, 64), np.float32), "FP32")
    buckets = {
        labels["le"]
        for labels, _ in samples(server.http_url, "kbundle_request_duration_seconds_bucket")
        if labels["protocol"] == "grpc"
    }
    assert {"0.0005", "30.0", "+Inf"} <= buckets
    assert min(float(b) for b in buckets) == 0.0005


def test_only_the_request_core_counts_requests():
    """grep: the request counter is touched in metrics.py (definition) and by the core only."""
    callers = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if re.search(r"\bmetrics\.record\(|\bREQUESTS\.labels\(|\bcount_request\(", text):
            callers.append(path.relative_to(SRC).as_posix())
    assert callers == ["serving/core.py", "serving/metrics.py"]


def test_rest_listener_is_tcp_so_asyncio_sets_nodelay_on_its_connections():
    """A proto-0 listener made asyncio skip TCP_NODELAY: measured +45 ms per small REST answer."""
    sock = bind_rest_socket(free_port(), "127.0.0.1")
    try:
        assert sock.proto == socket.IPPROTO_TCP
        with pytest.raises(SystemExit, match=r"REST port \d+ is in use .*--http_port"):
            bind_rest_socket(sock.getsockname()[1], "127.0.0.1")
    finally:
        sock.close()


def test_a_call_dropped_for_its_deadline_is_answered_deadline_exceeded_not_cancelled():
    """client_gone() is also true once a gRPC deadline passed; a client that still waits for
    the server's status (one that does not time out locally) must read DEADLINE_EXCEEDED. Found
    by bench/overload.py's lean client: a few calls came back CANCELLED."""
    from kbundle.errors import DeadlineExceeded, QueueFull
    from kbundle.serving.core import CallContext, RequestCore
    from kbundle.status import Status

    core = RequestCore(registry=None)
    late = CallContext(protocol="grpc", client_gone=lambda: True)
    dropped = core._failed(MODEL, late, 0.0, DeadlineExceeded("deadline passed while queued"))
    assert dropped.status is Status.DEADLINE_EXCEEDED
    # any other failure of a call nobody waits for is still counted as the client's cancel
    refused = core._failed(MODEL, late, 0.0, QueueFull("full"))
    assert refused.status is Status.CANCELLED
