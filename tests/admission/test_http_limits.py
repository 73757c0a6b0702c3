"""Size limits before the body is read, HTTP limits, memory return (issue 12 items 1, 4, 6),
on the real predictor and transformer, REST and gRPC.

Both servers run with max_request_bytes 16 MiB, a 2 s header timeout and the default 32 KiB head.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from proc_mem import peak_mb, reset_peak, rss_mb
from procs import start_module
from queue_model import build_slow_model, expected
from raw_http import send_headers, send_huge_body, send_slow_headers
from tritonclient.utils import InferenceServerException

LIMIT = 16 * 1024 * 1024
HUGE = 300 * 1024 * 1024
ENV = {"KBUNDLE_MAX_REQUEST_BYTES": str(LIMIT), "KBUNDLE_HEADER_TIMEOUT_S": "2"}
SLACK_MB = 64


@pytest.fixture(scope="module")
def servers(sample_models, tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("http-limits"))
    model_dir = build_slow_model(tmp / "fast", "max_batch_size: 0\nwarmup: false\n", layers=1)
    started = {}
    try:
        started["predictor"] = start_module(
            "kbundle.predictors",
            ["--model_name", "slow", "--model_dir", str(model_dir)],
            tmp / "predictor.log",
            "/v2/models/slow/ready",
            env=ENV,
        )
        digits = start_module(
            "kbundle.predictors",
            ["--model_name", "digits", "--model_dir", str(sample_models / "digits" / "v1")],
            tmp / "digits.log",
            "/v2/models/digits/ready",
        )
        started["digits"] = digits
        started["transformer"] = start_module(
            "kbundle.transformers",
            [
                "--model_name",
                "digits",
                "--model_dir",
                str(sample_models / "digits-transformer" / "v1"),
                "--predictor_host",
                digits.grpc_url,
                "--predictor_protocol",
                "grpc-v2",
            ],
            tmp / "transformer.log",
            "/v2/models/digits/ready",
            env=ENV,
        )
        yield started
    finally:
        for proc in reversed(started.values()):
            proc.stop()


COMPONENTS = {"predictor": "slow", "transformer": "digits"}


@pytest.fixture(params=list(COMPONENTS))
def component(request, servers):
    return request.param, servers[request.param], COMPONENTS[request.param]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_rest_300mb_body_is_413_while_read_and_memory_stays_bounded(component, chunked):
    _, server, model = component
    pid = server.proc.pid
    before = rss_mb(pid)
    reset_peak(pid)
    status, response, sent = send_huge_body(
        server.http_url, f"/v2/models/{model}/infer", HUGE, chunked
    )
    assert status == 413, response[:300]
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert str(LIMIT) in body["error"] and "max_request_bytes" in body["error"]
    assert sent < HUGE  # refused while reading: the client could not send it all
    assert peak_mb(pid) - before < LIMIT / 2**20 + SLACK_MB
    assert requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5).ok


def test_grpc_300mb_message_is_resource_exhausted(component):
    _, server, model = component
    client = grpcclient.InferenceServerClient(server.grpc_url)
    if model == "slow":
        tensor = grpcclient.InferInput("x", [HUGE // 1024, 256], "FP32")
        tensor.set_data_from_numpy(np.zeros((HUGE // 1024, 256), np.float32))
    else:
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"\0" * HUGE], dtype=object))
    pid = server.proc.pid
    before = rss_mb(pid)
    reset_peak(pid)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor])
    client.close()
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED", info.value
    assert str(LIMIT) in info.value.message()
    assert peak_mb(pid) - before < SLACK_MB


def test_64kb_of_headers_is_431(component):
    _, server, _ = component
    status, response = send_headers(server.http_url, [("x-big", "a" * 65536)])
    assert status == 431, response[:300]
    assert b"KBUNDLE_MAX_HEADER_BYTES" in response


def test_too_many_headers_is_431(component):
    _, server, _ = component
    status, response = send_headers(server.http_url, [(f"x-h{i}", "1") for i in range(200)])
    assert status == 431, response[:300]
    assert b"KBUNDLE_MAX_HEADERS" in response


def test_a_connection_sending_headers_a_byte_a_second_is_closed(component):
    _, server, _ = component
    closed, seconds = send_slow_headers(server.http_url, 12)
    assert closed and seconds < 8, seconds


@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("big"))
    model_dir = build_slow_model(tmp / "fast", "max_batch_size: 0\nwarmup: false\n", layers=1)
    proc = start_module(
        "kbundle.predictors",
        ["--model_name", "slow", "--model_dir", str(model_dir)],
        tmp / "predictor.log",
        "/v2/models/slow/ready",
        env={"KBUNDLE_MAX_REQUEST_BYTES": str(256 * 1024 * 1024)},
    )
    yield proc
    proc.stop()


def _json_request(x: np.ndarray) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    outputs = [{"name": "y", "parameters": {"binary_data": True}}]
    return json.dumps({"inputs": [tensor], "outputs": outputs}).encode()


def test_memory_returns_after_a_large_accepted_request(big_server):
    pid = big_server.proc.pid
    url = f"http://{big_server.http_url}/v2/models/slow/infer"
    headers = {"Content-Type": "application/json"}
    small = np.ones((4, 256), np.float32)
    requests.post(url, data=_json_request(small), headers=headers, timeout=60).raise_for_status()
    time.sleep(0.5)
    baseline = rss_mb(pid)
    x = np.random.default_rng(0).standard_normal((16384, 256)).astype(np.float32)
    body = _json_request(x)  # ~85 MB of JSON: millions of Python floats while decoded
    resp = requests.post(url, data=body, headers=headers, timeout=120)
    resp.raise_for_status()
    length = int(resp.headers["Inference-Header-Content-Length"])
    y = np.frombuffer(resp.content[length:], np.float32).reshape(16384, 256)
    np.testing.assert_allclose(y, expected(x, layers=1), atol=1e-4)
    time.sleep(1.0)
    assert rss_mb(pid) - baseline < 50, (baseline, rss_mb(pid), len(body))
