"""End to end: client -> transformer -> predictor (the sample digits model), real processes.

PNGs of the held-out digits (never trained on) go through the sample transformer spec over both
hop protocols, with tritonclient (gRPC and HTTP binary) and raw JSON with base64 images.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from transformer_helpers import bytes_array, png, start_predictor, start_transformer
from tritonclient.utils import InferenceServerException

from kbundle import samples

MIN_ACCURACY = 0.9
BATCH = 32  # the predictor's max_request_rows default is its max_batch_size (32)


@pytest.fixture(scope="module")
def heldout() -> tuple[list[bytes], np.ndarray]:
    _, test = samples.digits_split()
    return [png(image) for image in test.images], test.labels


@pytest.fixture(scope="module")
def servers(sample_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits-transformer")
    predictor = start_predictor(tmp, "digits", sample_models / "digits" / "v1", "predictor")
    spec_dir = sample_models / "digits-transformer" / "v1"
    started = [predictor]
    try:
        for protocol in ("grpc-v2", "v2"):
            started.append(
                start_transformer(
                    tmp,
                    "digits",
                    spec_dir,
                    predictor.grpc_url if protocol == "grpc-v2" else predictor.http_url,
                    protocol,
                    f"transformer-{protocol}",
                )
            )
        yield {"predictor": predictor, "grpc-v2": started[1], "v2": started[2]}
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(params=["grpc-v2", "v2"])
def transformer(request, servers):
    return servers[request.param]


def _accuracy(predicted: list[str], labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == labels.astype(str)))


def test_heldout_pngs_via_tritonclient_grpc(transformer, heldout):
    images, labels = heldout
    client = grpcclient.InferenceServerClient(transformer.grpc_url)
    predicted, passed_label = [], []
    for start in range(0, len(images), BATCH):
        chunk = bytes_array(images[start : start + BATCH])
        tensor = grpcclient.InferInput("image", [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(chunk)
        result = client.infer("digits", [tensor])
        top = result.as_numpy("labels")
        assert top.shape == (len(chunk), 3)
        scores = result.as_numpy("scores")
        assert np.all(np.diff(scores, axis=1) <= 0), "top-k scores come best first"
        predicted += [t.decode() for t in top[:, 0]]
        passed_label += result.as_numpy("label").tolist()
        # The predictor's version comes through the hop (kbundle.yaml: model_version: digits-v1).
        assert result.get_response().model_version == "digits-v1"
    assert _accuracy(predicted, labels) >= MIN_ACCURACY
    # Top-1 of the post-processing agrees with the model's own label output.
    assert predicted == [str(v) for v in passed_label]


def test_heldout_pngs_via_tritonclient_http_binary(transformer, heldout):
    images, labels = heldout
    client = httpclient.InferenceServerClient(transformer.http_url)
    predicted = []
    for start in range(0, len(images), BATCH):
        chunk = bytes_array(images[start : start + BATCH])
        tensor = httpclient.InferInput("image", [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(chunk, binary_data=True)
        outputs = [httpclient.InferRequestedOutput("labels", binary_data=True)]
        result = client.infer("digits", [tensor], outputs=outputs)
        assert result.as_numpy("scores") is None, "only the requested output comes back"
        predicted += [t.decode() for t in result.as_numpy("labels")[:, 0]]
    assert _accuracy(predicted, labels) >= MIN_ACCURACY


def test_heldout_pngs_via_raw_json_base64(transformer, heldout):
    images, labels = heldout
    predicted = []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(chunk)],
                    "data": [base64.b64encode(image).decode() for image in chunk],
                }
            ],
            "outputs": [{"name": "labels"}],
        }
        response = requests.post(
            f"http://{transformer.http_url}/v2/models/digits/infer", json=body, timeout=30
        )
        assert response.status_code == 200, response.text
        top = np.asarray(response.json()["outputs"][0]["data"]).reshape(len(chunk), 3)
        predicted += list(top[:, 0])
    assert _accuracy(predicted, labels) >= MIN_ACCURACY


def test_corrupt_image_is_400_naming_the_field(transformer, heldout):
    images, _ = heldout
    corrupt = images[0][:20] + b"\x00" * 40  # a PNG signature, then garbage
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(images[1]).decode(), base64.b64encode(corrupt).decode()],
            }
        ]
    }
    response = requests.post(
        f"http://{transformer.http_url}/v2/models/digits/infer", json=body, timeout=30
    )
    assert response.status_code == 400
    assert "input 'image' element 1" in response.json()["error"]

    client = grpcclient.InferenceServerClient(transformer.grpc_url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(bytes_array([b"not an image at all!"]))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image' element 0" in caught.value.message()


def test_missing_and_unknown_inputs_are_400(transformer):
    url = f"http://{transformer.http_url}/v2/models/digits/infer"
    body = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]
    }
    response = requests.post(url, json=body, timeout=30)
    assert response.status_code == 400
    assert "unknown input 'pixels'" in response.json()["error"]
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
    response = requests.post(url, json=body, timeout=30)
    assert response.status_code == 400
    assert "input 'image'" in response.json()["error"] and "BYTES" in response.json()["error"]


def test_empty_batch_and_v1_are_400(transformer):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}
    response = requests.post(
        f"http://{transformer.http_url}/v2/models/digits/infer", json=body, timeout=30
    )
    assert response.status_code == 400
    assert "input 'image': no rows" in response.json()["error"]
    response = requests.post(
        f"http://{transformer.http_url}/v1/models/digits:predict",
        json={"instances": [[0]]},
        timeout=30,
    )
    assert response.status_code == 400
    assert "V2 protocol only" in response.json()["error"]


def test_metadata_describes_what_clients_send(transformer):
    client = httpclient.InferenceServerClient(transformer.http_url)
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "scores", "label"]
