"""The ONNX Runtime predictor as a real process, spoken to with tritonclient (http, grpc) and raw JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from procs import start_predictor
from tritonclient.utils import InferenceServerException

from kbundle.samples import digits_split

MODEL = "digits"


@pytest.fixture(scope="module")
def server(digits_v1: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "predictor.log"
    proc = start_predictor(MODEL, digits_v1, log)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def session(digits_v1: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(digits_v1 / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    _, test = digits_split()
    return test.images.reshape(len(test.images), 64).astype(np.float32)


def direct(session: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def json_infer(server, payload: dict, headers: dict | None = None) -> tuple[int, dict]:
    status, _, body = post(
        server, f"/v2/models/{MODEL}/infer", json.dumps(payload).encode(), headers
    )
    return status, json.loads(body)


def v2_json_input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict:
    return {
        "name": name,
        "shape": list(x.shape),
        "datatype": datatype,
        "data": x.reshape(-1).tolist(),
    }


# -- health and metadata -----------------------------------------------------------------------
def test_live_and_ready_over_both_protocols(http, grpc_client):
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MODEL)
    assert grpc_client.is_server_live() and grpc_client.is_model_ready(MODEL)


def test_metadata_equals_engine_signature(http, grpc_client, session):
    def expected(args):
        return [
            {"name": a.name, "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in args
        ]

    meta = http.get_model_metadata(MODEL)
    assert [{"name": t["name"], "shape": t["shape"]} for t in meta["inputs"]] == expected(
        session.get_inputs()
    )
    assert [{"name": t["name"], "shape": t["shape"]} for t in meta["outputs"]] == expected(
        session.get_outputs()
    )
    assert [t["datatype"] for t in meta["inputs"]] == ["FP32"]
    assert [t["datatype"] for t in meta["outputs"]] == ["INT64", "FP32"]
    gmeta = grpc_client.get_model_metadata(MODEL, as_json=True)
    assert gmeta["platform"] == meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta["inputs"]] == [
        ("input", "FP32", [-1, 64])
    ]


def test_unknown_model_is_not_found_on_both_protocols(http, grpc_client):
    with pytest.raises(InferenceServerException) as rest_err:
        http.get_model_metadata("nope")
    assert rest_err.value.status() == "404", rest_err.value
    assert "nope" in rest_err.value.message(), rest_err.value
    with pytest.raises(InferenceServerException) as grpc_err:
        grpc_client.is_model_ready("nope")
    assert grpc_err.value.status() == "StatusCode.NOT_FOUND"


# -- results equal onnxruntime called directly ---------------------------------------------------
@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("binary", [True, False])
def test_http_results_equal_direct_onnxruntime(http, session, held_out, rows, binary):
    x = held_out[:rows]
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = http.infer(
        MODEL,
        [tensor],
        outputs=outputs,
        headers={"Content-Type": "application/json"} if not binary else None,
    )
    want = direct(session, x)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 32])
def test_grpc_results_equal_direct_onnxruntime(grpc_client, session, held_out, rows):
    x = held_out[:rows]
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = grpc_client.infer(MODEL, [tensor])
    want = direct(session, x)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    assert result.get_response().model_version == "digits-v1"


def test_tritonclient_json_request_without_content_type_succeeds(http, session, held_out):
    # tritonclient.http sends no Content-Type for JSON-only tensors; stock kserve 0.21 answers 400.
    tensor = httpclient.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(held_out[:2], binary_data=False)
    result = http.infer(
        MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)]
    )
    np.testing.assert_array_equal(result.as_numpy("label"), direct(session, held_out[:2])["label"])


def test_requested_outputs_only_those_returned(http, grpc_client, held_out):
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(held_out[:1])
    result = http.infer(MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    gtensor = grpcclient.InferInput("input", [1, 64], "FP32")
    gtensor.set_data_from_numpy(held_out[:1])
    gresult = grpc_client.infer(
        MODEL, [gtensor], outputs=[grpcclient.InferRequestedOutput("probabilities")]
    )
    assert [o.name for o in gresult.get_response().outputs] == ["probabilities"]


def test_raw_json_gets_generated_id_and_no_null_fields(server, held_out, session):
    status, body = json_infer(server, {"inputs": [v2_json_input(held_out[:3])]})
    assert status == 200
    assert body["id"] and isinstance(body["id"], str)
    assert "null" not in json.dumps(body)
    labels = next(o for o in body["outputs"] if o["name"] == "label")
    assert labels["data"] == direct(session, held_out[:3])["label"].tolist()
    status, body = json_infer(server, {"id": "req-42", "inputs": [v2_json_input(held_out[:1])]})
    assert status == 200 and body["id"] == "req-42"


def test_binary_output_requested_by_parameter(server, held_out, session):
    payload = {"inputs": [v2_json_input(held_out[:2])], "parameters": {"binary_data_output": True}}
    status, headers, body = post(server, f"/v2/models/{MODEL}/infer", json.dumps(payload).encode())
    assert status == 200
    head_len = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    head = json.loads(body[:head_len])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    label_raw = body[head_len : head_len + sizes[0]]
    np.testing.assert_array_equal(
        np.frombuffer(label_raw, dtype=np.int64), direct(session, held_out[:2])["label"]
    )


# -- bad input: 400 / INVALID_ARGUMENT naming the field, and the server keeps serving --------------
BAD_JSON_CASES = {
    "unknown input": (
        {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]},
        "unknown input 'pixels'",
    ),
    "missing input": ({"inputs": []}, "'inputs' must be a non-empty list"),
    "wrong datatype": (
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT32", "data": [0] * 64}]},
        "model 'digits' input 'input': expected FP32 [-1, 64], got INT32 [1, 64]",
    ),
    "wrong rank": (
        {"inputs": [{"name": "input", "shape": [64], "datatype": "FP32", "data": [0.0] * 64}]},
        "expected FP32 [-1, 64], got FP32 [64]",
    ),
    "wrong fixed dim": (
        {"inputs": [{"name": "input", "shape": [2, 5], "datatype": "FP32", "data": [0.0] * 10}]},
        "expected FP32 [-1, 64], got FP32 [2, 5]",
    ),
    "data length": (
        {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 100}]},
        "needs 128 elements, got 100",
    ),
    "strings for numbers": (
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]},
        "input 'input'",
    ),
    "unknown output": (
        {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
            "outputs": [{"name": "logits"}],
        },
        "unknown output 'logits'",
    ),
    "unknown datatype": (
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FLOAT", "data": [0.0] * 64}]},
        "unknown datatype 'FLOAT'",
    ),
    "negative dim": (
        {"inputs": [{"name": "input", "shape": [-1, 64], "datatype": "FP32", "data": [0.0] * 64}]},
        "negative dimension",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSON_CASES))
def test_bad_json_request_is_400_naming_the_field_then_serving_continues(
    server, held_out, session, case
):
    payload, message = BAD_JSON_CASES[case]
    status, body = json_infer(server, payload)
    assert status == 400, body
    assert message in body["error"]
    status, body = json_infer(server, {"inputs": [v2_json_input(held_out[:1])]})
    assert status == 200
    assert body["outputs"][0]["data"] == direct(session, held_out[:1])["label"].tolist()


def test_body_that_is_not_json_is_400(server):
    status, _, body = post(server, f"/v2/models/{MODEL}/infer", b"\x00not json")
    assert status == 400 and b"not valid JSON" in body


def test_binary_data_too_short_is_400(server):
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 100},
                }
            ]
        }
    ).encode()
    status, _, body = post(
        server,
        f"/v2/models/{MODEL}/infer",
        head + b"\x00" * 100,
        {"Inference-Header-Content-Length": str(len(head))},
    )
    assert status == 400 and b"needs 256 bytes of data, got 100" in body


def test_grpc_bad_inputs_are_invalid_argument_then_serving_continues(
    grpc_client, held_out, session
):
    wrong_type = grpcclient.InferInput("input", [1, 64], "FP64")
    wrong_type.set_data_from_numpy(held_out[:1].astype(np.float64))
    wrong_dim = grpcclient.InferInput("input", [1, 8], "FP32")
    wrong_dim.set_data_from_numpy(held_out[:1, :8])
    unknown = grpcclient.InferInput("pixels", [1, 64], "FP32")
    unknown.set_data_from_numpy(held_out[:1])
    for tensor, message in (
        (wrong_type, "expected FP32 [-1, 64], got FP64 [1, 64]"),
        (wrong_dim, "expected FP32 [-1, 64], got FP32 [1, 8]"),
        (unknown, "unknown input 'pixels'"),
    ):
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(MODEL, [tensor])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert message in err.value.message()
        good = grpcclient.InferInput("input", [1, 64], "FP32")
        good.set_data_from_numpy(held_out[:1])
        assert (
            grpc_client.infer(MODEL, [good]).as_numpy("label").tolist()
            == direct(session, held_out[:1])["label"].tolist()
        )


def test_grpc_raw_length_mismatch_is_invalid_argument(server):
    # tritonclient's protos (kserve's define the same `inference.*` symbols: one per process).
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(b"\x00" * 12)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 256 bytes of data, got 12" in err.value.details()


# -- concurrency: every request gets exactly its own rows ----------------------------------------
def test_64_concurrent_mixed_rest_and_grpc_requests_get_their_own_rows(server, held_out, session):
    want = direct(session, held_out)["label"]
    http_c = httpclient.InferenceServerClient(server.http_url, concurrency=32)
    grpc_c = grpcclient.InferenceServerClient(server.grpc_url)

    def window(i: int) -> tuple[int, int, np.ndarray]:
        rows = 1 + i % 5
        start = (i * 7) % (len(held_out) - rows)
        return start, rows, held_out[start : start + rows]

    def grpc_one(i: int) -> np.ndarray:
        _, _, x = window(i)
        t = grpcclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        return grpc_c.infer(MODEL, [t]).as_numpy("label")

    # tritonclient.http is gevent-based: its own async_infer gives REST concurrency (not threads).
    rest_pending = {}
    for i in range(0, 96, 2):
        _, _, x = window(i)
        t = httpclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=i % 4 == 0)
        rest_pending[i] = http_c.async_infer(
            MODEL, [t], headers={"Content-Type": "application/json"}
        )
    with ThreadPoolExecutor(24) as pool:
        grpc_results = dict(zip(range(1, 96, 2), pool.map(grpc_one, range(1, 96, 2)), strict=True))
    results = {i: req.get_result().as_numpy("label") for i, req in rest_pending.items()}
    results.update(grpc_results)
    http_c.close()
    grpc_c.close()
    assert len(results) == 96
    for i, labels in results.items():
        start, rows, _ = window(i)
        np.testing.assert_array_equal(labels, want[start : start + rows])


# -- start-up refusals -----------------------------------------------------------------------------
def run_predictor(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kbundle.predictors", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workers_below_one_is_refused_with_a_reason(digits_v1):
    result = run_predictor(["--model_name", MODEL, "--model_dir", str(digits_v1), "--workers", "0"])
    assert result.returncode == 2
    assert "--workers: expected 'auto' or a whole number >= 1, got '0'" in result.stderr


def test_missing_engine_file_fails_with_one_line_reason(tmp_path):
    result = run_predictor(
        ["--model_name", MODEL, "--model_dir", str(tmp_path), "--http_port", "0"]
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: model '{MODEL}' failed to load: no engine file")
    )
