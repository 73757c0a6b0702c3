"""Tabular feature end to end: named columns (per-column inputs or JSON rows) -> the engine's
feature matrix. The predictor serves a real ONNX Identity model, so its `echo` output is exactly
the tensor the engine received."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from transformer_helpers import (
    bytes_array,
    start_predictor,
    start_transformer,
    write_identity_model,
)
from tritonclient.utils import InferenceServerException

SPEC = """\
inputs:
  - kind: tabular
    tensor: features
    rows_input: rows
    columns:
      - {name: age, type: numeric, mean: 40, std: 10}
      - {name: income, type: numeric, mean: 50000, std: 20000, missing: mean}
      - {name: colour, type: categorical, vocabulary: [red, green, blue]}
      - {name: size, type: categorical, vocabulary: [S, M, L], encoding: index, missing: value, value: M, unknown: zeros}
outputs:
  - {kind: tensor, tensor: echo, name: features, datatype: FP32}
"""
# Rows: (age, income or NaN, colour, size or "" / unknown)
EXPECTED = np.array(
    [
        [(30 - 40) / 10, (70000 - 50000) / 20000, 1, 0, 0, 2],  # size L -> 2
        [(55 - 40) / 10, 0.0, 0, 0, 1, 1],  # income missing -> mean; size missing -> M -> 1
        [(40 - 40) / 10, (10000 - 50000) / 20000, 0, 1, 0, 3],  # size XL unknown -> bucket 3
    ],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tabular")
    write_identity_model(tmp / "predictor" / "model.onnx", width=6)
    (tmp / "spec").mkdir()
    (tmp / "spec" / "transformer.yaml").write_text(SPEC)
    predictor = start_predictor(tmp, "rows", tmp / "predictor", "predictor")
    try:
        server = start_transformer(
            tmp, "rows", tmp / "spec", predictor.grpc_url, "grpc-v2", "transformer"
        )
        yield server
        server.stop()
    finally:
        predictor.stop()


def _grpc_columns(transformer, drop: str | None = None, colour=(b"red", b"blue", b"green")):
    columns = {
        "age": np.array([30, 55, 40], np.float64),
        "income": np.array([[70000], [np.nan], [10000]], np.float32),
        "colour": bytes_array(list(colour)),
        "size": bytes_array([b"L", b"", b"XL"]),
    }
    tensors = []
    for name, array in columns.items():
        if name == drop:
            continue
        dtype = (
            "BYTES" if array.dtype == object else ("FP64" if array.dtype == np.float64 else "FP32")
        )
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    client = grpcclient.InferenceServerClient(transformer.grpc_url)
    return client.infer("rows", tensors).as_numpy("features")


def _json_rows(transformer, rows: list[dict]) -> requests.Response:
    body = {
        "inputs": [
            {
                "name": "rows",
                "datatype": "BYTES",
                "shape": [len(rows)],
                "data": [json.dumps(r) for r in rows],
            }
        ]
    }
    return requests.post(
        f"http://{transformer.http_url}/v2/models/rows/infer", json=body, timeout=30
    )


ROWS = [
    {"age": 30, "income": 70000, "colour": "red", "size": "L"},
    {"age": 55, "colour": "blue", "size": None},
    {"age": 40, "income": 10000, "colour": "green", "size": "XL"},
]


def test_columns_become_the_engine_matrix_in_spec_order(transformer):
    np.testing.assert_allclose(_grpc_columns(transformer), EXPECTED, rtol=1e-6)


def test_json_rows_give_the_same_matrix(transformer):
    response = _json_rows(transformer, ROWS)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["shape"] == [3, 6]
    np.testing.assert_allclose(np.reshape(out["data"], (3, 6)), EXPECTED, rtol=1e-6)


def test_missing_feature_is_400_naming_it(transformer):
    with pytest.raises(InferenceServerException) as caught:
        _grpc_columns(transformer, drop="age")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'age' is missing" in caught.value.message()
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "age"}]
    response = _json_rows(transformer, rows)
    assert response.status_code == 400
    assert "feature 'age': value missing in row 1" in response.json()["error"]


def test_unknown_category_is_400_naming_feature_and_value(transformer):
    with pytest.raises(InferenceServerException) as caught:
        _grpc_columns(transformer, colour=(b"red", b"purple", b"green"))
    assert "feature 'colour': unknown category 'purple' in row 1" in caught.value.message()
    response = _json_rows(transformer, [{**ROWS[0], "colour": "teal"}])
    assert response.status_code == 400
    assert "feature 'colour': unknown category 'teal'" in response.json()["error"]


def test_unknown_feature_name_in_a_row_is_400(transformer):
    response = _json_rows(transformer, [{**ROWS[0], "agee": 3}])
    assert response.status_code == 400
    assert "unknown feature(s) ['agee']" in response.json()["error"]
    response = _json_rows(transformer, [{"age": "old", "colour": "red"}])
    assert response.status_code == 400
    assert "feature 'age'" in response.json()["error"]
