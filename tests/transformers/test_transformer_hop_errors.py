"""The hop, observed from the predictor's side: forwarded headers, the predictor's 4xx kept as the
same 4xx with its message, and a predictor outage as 503 / UNAVAILABLE.

The predictor here is `recording_v2_server.py`: our real V2 server in its own process, serving a
model with the digits signature that records each request's headers (a real engine cannot tell
us which headers reached it).
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from transformer_helpers import HOP_TIMEOUT_S as TIMEOUT_S
from transformer_helpers import HOPS, bytes_array, png, recorded
from tritonclient.utils import InferenceServerException

TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1",
    "x-b3-sampled": "1",
    "authorization": "Bearer ok",
}
IMAGE = png(np.eye(8) * 16)


def _rest(transformer, headers: dict[str, str]) -> requests.Response:
    data = [base64.b64encode(IMAGE).decode()]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}]}
    url = f"http://{transformer.http_url}/v2/models/digits/infer"
    return requests.post(url, json=body, headers=headers, timeout=30)


def _grpc(transformer, headers: dict[str, str]):
    client = grpcclient.InferenceServerClient(transformer.grpc_url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(bytes_array([IMAGE]))
    return client.infer("digits", [tensor], headers=headers)


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("client", ["rest", "grpc"])
def test_trace_and_auth_headers_reach_the_predictor(recording_hops, hop, client):
    request_id = f"{client}-{hop}-{uuid.uuid4()}"
    headers = {"x-request-id": request_id, **TRACE, "x-custom": "stays-here"}
    if client == "rest":
        response = _rest(recording_hops[hop], headers)
        assert response.status_code == 200, response.text
    else:
        result = _grpc(recording_hops[hop], headers)
        assert result.as_numpy("labels")[0, 0] == b"7"
    seen = recorded(recording_hops["record"], request_id)["headers"]
    for name, value in TRACE.items():
        assert seen.get(name) == value, f"{name} not forwarded over {hop}"
    assert "x-custom" not in seen, "only identity/trace/auth headers cross the hop"


@pytest.mark.parametrize("hop", HOPS)
def test_predictor_400_comes_back_as_400_with_its_message(recording_hops, hop):
    response = _rest(recording_hops[hop], {"authorization": "Bearer invalid"})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "refused by the recording predictor" in message and "predictor 'digits'" in message
    with pytest.raises(InferenceServerException) as caught:
        _grpc(recording_hops[hop], {"authorization": "Bearer invalid"})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "refused by the recording predictor" in caught.value.message()


@pytest.mark.parametrize("hop", HOPS)
def test_predictor_403_comes_back_as_403(recording_hops, hop):
    response = _rest(recording_hops[hop], {"authorization": "Bearer denied"})
    assert response.status_code == 403
    assert "token not allowed" in response.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        _grpc(recording_hops[hop], {"authorization": "Bearer denied"})
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"


@pytest.mark.parametrize("hop", HOPS)
def test_predictor_timeout_is_504(recording_hops, hop):
    response = _rest(recording_hops[hop], {"authorization": "Bearer slow"})
    assert response.status_code == 504
    assert f"did not answer within {TIMEOUT_S} s" in response.json()["error"]


def test_predictor_down_is_503_on_both_hops(recording_hops):
    """Runs last in this module: it stops the predictor."""
    recording_hops["predictor"].stop()
    for hop in HOPS:
        response = _rest(recording_hops[hop], {})
        assert response.status_code == 503, response.text
        assert "unavailable" in response.json()["error"]
        with pytest.raises(InferenceServerException) as caught:
            _grpc(recording_hops[hop], {})
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
    for hop in HOPS:
        assert "internal error" not in recording_hops[hop].log(), (
            "an outage is not an internal error"
        )
