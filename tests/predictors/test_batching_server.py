"""Dynamic batching through the real predictor process, with tritonclient over REST and gRPC.

Functional only: concurrent requests of mixed sizes and widths must each get exactly their own
rows, an engine failure fails only its own request, counters move, and Triton's model
configuration extension is served (perf_analyzer and model analyzer need it).
"""

from __future__ import annotations

import json
import queue
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from batching_models import build_batching_model, expected, request_arrays
from metrics_text import total
from procs import start_predictor
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

MODEL = "batchy"
OUTPUTS = ("echo", "sum", "row")
# max_request_rows 0: requests over max_batch_size (run alone) are part of what is tested here.
CONFIG = "max_batch_size: 8\nmax_batch_delay_ms: 2\nintra_op_threads: 1\nmax_request_rows: 0\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("batching-server"))
    model_dir = build_batching_model(root / MODEL, CONFIG)
    proc = start_predictor(MODEL, model_dir, root / "server.log")
    yield proc
    proc.stop()


def _inputs(module, arrays: dict[str, np.ndarray]) -> list:
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=True)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _outputs(module) -> list:
    if module is httpclient:
        return [httpclient.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
    return [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]


def fire(server, requests: list[tuple[str, dict[str, np.ndarray]]], grpc_args=None) -> list:
    """Send all requests at once (REST via a 16-connection pool, gRPC async); results in order."""
    http = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    grpc = grpcclient.InferenceServerClient(server.grpc_url, channel_args=grpc_args)
    done: queue.Queue = queue.Queue()
    pending_http = {}
    try:
        for index, (protocol, arrays) in enumerate(requests):
            if protocol == "rest":
                pending_http[index] = http.async_infer(
                    MODEL, _inputs(httpclient, arrays), outputs=_outputs(httpclient)
                )
            else:
                grpc.async_infer(
                    MODEL,
                    _inputs(grpcclient, arrays),
                    callback=lambda result, error, i=index: done.put((i, result, error)),
                    outputs=_outputs(grpcclient),
                )
        results: list = [None] * len(requests)
        for index, handle in pending_http.items():
            try:
                results[index] = handle.get_result()
            except InferenceServerException as exc:
                results[index] = exc
        for _ in range(len(requests) - len(pending_http)):
            index, result, error = done.get(timeout=60)
            results[index] = error if error is not None else result
        return results
    finally:
        http.close()
        grpc.close()


def check_rows(arrays: dict, result) -> None:
    assert not isinstance(result, Exception), result
    want = expected(arrays)
    for name in OUTPUTS:
        np.testing.assert_array_equal(result.as_numpy(name), want[name], err_msg=name)


def metric(server, name: str, **labels: str) -> float:
    return total(server.http_url, name, **labels)


def test_concurrent_mixed_batch_sizes_get_exactly_their_own_rows(server):
    rng = np.random.default_rng(1)
    requests = [
        ("rest" if tag % 2 else "grpc", request_arrays(tag, int(rng.integers(1, 13)), 3))
        for tag in range(40)
    ]
    for (_, arrays), result in zip(requests, fire(server, requests), strict=True):
        check_rows(arrays, result)


def test_requests_of_different_widths_never_mix(server):
    requests = [
        ("grpc" if tag % 3 else "rest", request_arrays(tag, 1 + tag % 4, (2, 3, 5)[tag % 3]))
        for tag in range(36)
    ]
    for (_, arrays), result in zip(requests, fire(server, requests), strict=True):
        check_rows(arrays, result)


def test_engine_failure_fails_only_its_own_request(server):
    bad = {5, 17}
    requests = [
        ("rest" if tag % 2 else "grpc", request_arrays(tag, 2, 3, bad=tag in bad))
        for tag in range(24)
    ]
    results = fire(server, requests)
    for tag, ((_, arrays), result) in enumerate(zip(requests, results, strict=True)):
        if tag in bad:
            assert isinstance(result, InferenceServerException)
            assert result.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            assert "shapes or values" in str(result) and MODEL in str(result)
        else:
            check_rows(arrays, result)


def test_invalid_request_is_refused_before_batching(server):
    arrays = request_arrays(1, 2, 3)
    arrays["idx"] = arrays["idx"].astype(np.int32)
    requests = [("rest", arrays), ("grpc", arrays), ("rest", request_arrays(2, 1, 3))]
    rest_bad, grpc_bad, good = fire(server, requests)
    assert rest_bad.status() == "400" and "expected INT64" in str(rest_bad)
    assert grpc_bad.status() == "StatusCode.INVALID_ARGUMENT" and "expected INT64" in str(grpc_bad)
    check_rows(request_arrays(2, 1, 3), good)


def test_metrics_counters_move(server):
    before = {
        "rest": metric(server, "kbundle_requests_total", model=MODEL, protocol="rest"),
        "grpc": metric(server, "kbundle_requests_total", model=MODEL, protocol="grpc"),
        "errors": metric(server, "kbundle_requests_total", model=MODEL, outcome="client_error"),
        "batches": metric(server, "kbundle_batch_size_count", model=MODEL),
        "rows": metric(server, "kbundle_batch_size_sum", model=MODEL),
        "waits": metric(server, "kbundle_queue_wait_seconds_count", model=MODEL),
        "engine": metric(server, "kbundle_engine_seconds_count", model=MODEL),
    }
    requests = [
        ("rest", request_arrays(1, 3, 3)),
        ("grpc", request_arrays(2, 2, 3)),
        ("grpc", request_arrays(3, 1, 3, bad=True)),
    ]
    fire(server, requests)
    assert (
        metric(server, "kbundle_requests_total", model=MODEL, protocol="rest") == before["rest"] + 1
    )
    assert (
        metric(server, "kbundle_requests_total", model=MODEL, protocol="grpc") == before["grpc"] + 2
    )
    assert (
        # the bad request's out-of-range index is the client's fault (400), not the revision's
        metric(server, "kbundle_requests_total", model=MODEL, outcome="client_error")
        == before["errors"] + 1
    )
    assert metric(server, "kbundle_queue_wait_seconds_count", model=MODEL) >= before["waits"] + 3
    assert metric(server, "kbundle_batch_size_count", model=MODEL) > before["batches"]
    assert metric(server, "kbundle_batch_size_sum", model=MODEL) >= before["rows"] + 6
    assert metric(server, "kbundle_engine_seconds_count", model=MODEL) > before["engine"]


def test_model_config_over_rest(server):
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 8
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [-1]},
        {"name": "idx", "data_type": "TYPE_INT64", "dims": [1]},
    ]
    assert {o["name"]: o["dims"] for o in config["output"]} == {
        "echo": [-1],
        "sum": [1],
        "row": [1, 4],
    }
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 2000,
        "preferred_batch_size": [8],
    }


def test_model_config_over_grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        ("x", "TYPE_FP32", [-1]),
        ("idx", "TYPE_INT64", [1]),
    ]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_config("nope")


def _nulls(value, path="") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


def test_metadata_and_config_json_have_no_null_fields(server):
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/config"):
        body = json.load(urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10))
        assert _nulls(body) == [], (path, body)
    meta = json.load(
        urllib.request.urlopen(f"http://{server.http_url}/v2/models/{MODEL}", timeout=10)
    )
    assert [i["name"] for i in meta["inputs"]] == ["x", "idx"]


def test_unknown_model_config_is_404(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{server.http_url}/v2/models/nope/config", timeout=10)
    assert info.value.code == 404


def test_unknown_model_infer_is_404_and_shares_one_metrics_label(server):
    before = metric(server, "kbundle_requests_total", model="_unknown", protocol="rest")
    for name in ("nope-1", "nope-2"):
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/models/{name}/infer",
            data=b'{"inputs": []}',
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 404
        assert json.loads(info.value.read()) == {"error": f"model '{name}' is not served here"}
    assert metric(server, "kbundle_requests_total", model="_unknown", protocol="rest") == before + 2
    assert metric(server, "kbundle_requests_total", model="nope-1", protocol="rest") == 0
