"""Small truths on the wire (issue 17): non-finite JSON values, values that do not fit their
datatype, booleans as booleans, out-of-range integers said in words. Real predictor, tritonclient."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from procs import start_module

MODEL = "wire"
TYPES = {"fp16": TensorProto.FLOAT16, "fp32": TensorProto.FLOAT, "i64": TensorProto.INT64}
SPECIAL = [np.nan, np.inf, -np.inf, 1.5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("wire"))
    inputs = [helper.make_tensor_value_info(f"in_{k}", t, ["b", 4]) for k, t in TYPES.items()]
    outputs = [helper.make_tensor_value_info(f"out_{k}", t, ["b", 4]) for k, t in TYPES.items()]
    nodes = [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in TYPES]
    graph = helper.make_graph(nodes, "wire", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "model.onnx"))
    (root / "kbundle.yaml").write_text("max_batch_size: 0\n")
    proc = start_module(
        "kbundle.predictors",
        ["--model_name", MODEL, "--model_dir", str(root)],
        root / "server.log",
        f"/v2/models/{MODEL}/ready",
    )
    yield proc
    proc.stop()


def _post(server, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/infer", json.dumps(body).encode()
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _body(fp32=(1.0, 2.0, 3.0, 4.0), i64=(1, 2, 3, 4), parameters=None) -> dict:
    body = {
        "inputs": [
            {"name": "in_fp16", "datatype": "FP16", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "in_fp32", "datatype": "FP32", "shape": [1, 4], "data": list(fp32)},
            {"name": "in_i64", "datatype": "INT64", "shape": [1, 4], "data": list(i64)},
        ]
    }
    if parameters is not None:
        body["parameters"] = parameters
    return body


@pytest.mark.parametrize("binary_inputs", [True, False])
def test_nan_and_infinities_come_back_distinct_in_json(server, binary_inputs) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    tensors = []
    for key, dtype in (("fp16", np.float16), ("fp32", np.float32), ("i64", np.int64)):
        array = np.array([SPECIAL if key != "i64" else [1, 2, 3, 4]], dtype=dtype)
        tensor = httpclient.InferInput(f"in_{key}", [1, 4], key.upper().replace("I64", "INT64"))
        tensor.set_data_from_numpy(array, binary_data=binary_inputs)
        tensors.append(tensor)
    wanted = [httpclient.InferRequestedOutput(f"out_{k}", binary_data=False) for k in TYPES]
    result = client.infer(MODEL, tensors, outputs=wanted)
    for key in ("fp16", "fp32"):
        got = result.as_numpy(f"out_{key}")[0]
        assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf and got[3] == 1.5
    data = result.get_response()["outputs"][0]["data"]
    assert data[0] != data[0] and data[1:] == [float("inf"), float("-inf"), 1.5]


def test_non_finite_values_are_bare_tokens_as_triton_writes_them(server) -> None:
    body = _body()
    body["inputs"][1]["data"] = [1.0, 2.0, 3.0, 4.0]
    status, text = _post(server, body)
    assert status == 200 and "null" not in text
    # JSON input with the tokens (Triton and tritonclient both read them), JSON output with them.
    raw = json.dumps(_body(fp32=SPECIAL))
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/infer", raw.encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    assert "[NaN,Infinity,-Infinity,1.5]" in text.replace(" ", "") and "null" not in text


def test_a_value_that_does_not_fit_fp32_is_refused_not_made_infinite(server) -> None:
    status, text = _post(server, _body(fp32=(1.0, 1e300, 3.0, 4.0)))
    assert status == 400
    assert "model 'wire' input 'in_fp32': value 1e+300 does not fit FP32" in text


@pytest.mark.parametrize("value", [100000000000000000000, -9223372036854775809, 2**64])
def test_an_int64_out_of_range_says_so_in_words(server, value) -> None:
    raw = json.dumps(_body()).replace("[1, 2, 3, 4]}]", f"[1, 2, 3, {value}]}}]")
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/infer", raw.encode()
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    text = info.value.read().decode()
    assert info.value.code == 400
    assert "input 'in_i64': a value is outside the INT64 range" in text and "floats" not in text


@pytest.mark.parametrize("value", ["false", "true", 0, None])
def test_binary_data_output_must_be_a_boolean(server, value) -> None:
    status, text = _post(server, _body(parameters={"binary_data_output": value}))
    if value is None:  # absent-like: null is no setting at all -> still must be a boolean
        assert status == 400 and "binary_data_output" in text
        return
    assert status == 400
    assert "parameter 'binary_data_output' must be true or false (a JSON boolean)" in text


def test_binary_data_output_false_gives_json(server) -> None:
    status, text = _post(server, _body(parameters={"binary_data_output": False}))
    assert status == 200 and json.loads(text)["outputs"][1]["data"] == [1.0, 2.0, 3.0, 4.0]
