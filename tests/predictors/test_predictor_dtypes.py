"""FP16, BOOL, integer types and BYTES round-trip through a real predictor on both protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from procs import start_module

MODEL = "identity"
TYPES = {
    "fp16": ("FP16", TensorProto.FLOAT16, np.float16),
    "bool": ("BOOL", TensorProto.BOOL, np.bool_),
    "int8": ("INT8", TensorProto.INT8, np.int8),
    "uint8": ("UINT8", TensorProto.UINT8, np.uint8),
    "int32": ("INT32", TensorProto.INT32, np.int32),
    "int64": ("INT64", TensorProto.INT64, np.int64),
    "fp64": ("FP64", TensorProto.DOUBLE, np.float64),
    "text": ("BYTES", TensorProto.STRING, np.object_),
}


def build_identity_model(path: Path) -> None:
    """One Identity per datatype: each output must equal its input exactly."""
    inputs, outputs, nodes = [], [], []
    for key, (_, onnx_type, _) in TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{key}", onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{key}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{key}"], [f"out_{key}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def sample(key: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    datatype, _, dtype = TYPES[key]
    if datatype == "BYTES":
        return np.array(
            [[f"r{r}c{c}-é".encode() for c in range(3)] for r in range(rows)], dtype=object
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 3)).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
    return rng.standard_normal((rows, 3)).astype(dtype)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("identity")
    build_identity_model(model_dir / "model.onnx")
    proc = start_module(
        "kbundle.predictors",
        # Unbatched (max_batch_size 0): the direct engine path, where the digits tests cover the batcher.
        ["--model_name", MODEL, "--model_dir", str(model_dir), "--max_batch_size", "0"],
        model_dir / "predictor.log",
        ready_path=f"/v2/models/{MODEL}/ready",
    )
    yield proc
    proc.stop()


def test_metadata_reports_every_datatype(server):
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata(MODEL)
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {
        f"in_{k}": v[0] for k, v in TYPES.items()
    }
    assert all(t["shape"] == [-1, 3] for t in meta["inputs"] + meta["outputs"])


@pytest.mark.parametrize("binary", [True, False])
def test_http_round_trip_every_datatype(server, binary):
    client = httpclient.InferenceServerClient(server.http_url)
    tensors, outputs = [], []
    for key, (datatype, _, _) in TYPES.items():
        # FP16 has no JSON form in tritonclient: it stays binary, so "JSON" runs mix both kinds.
        as_binary = binary or datatype == "FP16"
        t = httpclient.InferInput(f"in_{key}", [2, 3], datatype)
        t.set_data_from_numpy(sample(key), binary_data=as_binary)
        tensors.append(t)
        outputs.append(httpclient.InferRequestedOutput(f"out_{key}", binary_data=as_binary))
    result = client.infer(
        MODEL, tensors, outputs=outputs, headers={"Content-Type": "application/json"}
    )
    for t in tensors:
        key = t.name()[3:]
        got = result.as_numpy(f"out_{key}")
        want = sample(key)
        if TYPES[key][0] == "BYTES" and not binary:
            want = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(
                want
            )  # JSON BYTES are strings
        np.testing.assert_array_equal(got, want)
        if TYPES[key][0] != "BYTES":
            assert got.dtype == TYPES[key][2]


def test_grpc_round_trip_every_datatype(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = []
    for key, (datatype, _, _) in TYPES.items():
        t = grpcclient.InferInput(f"in_{key}", [2, 3], datatype)
        t.set_data_from_numpy(sample(key))
        tensors.append(t)
    result = client.infer(MODEL, tensors)
    for key, (datatype, _, dtype) in TYPES.items():
        got = result.as_numpy(f"out_{key}")
        np.testing.assert_array_equal(got, sample(key))
        if datatype != "BYTES":
            assert got.dtype == dtype


def test_integer_out_of_range_in_json_is_400(server):
    import json
    import urllib.error
    import urllib.request

    payload = {
        "inputs": [{"name": "in_uint8", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 300]}]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/infer",
        data=json.dumps(payload).encode(),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400
    assert "outside the UINT8 range" in json.loads(err.value.read())["error"]
