"""The client's deadline travels through the transformer to the predictor (issue 12 item 5): a
gRPC deadline, the V2 `timeout` parameter or the x-request-timeout-ms header arriving at the
transformer reaches the predictor as the time left (gRPC deadline / timeout header on the hop).

The predictor is `recording_v2_server.py` (our real V2 server in its own process), which records
the seconds left before each request's deadline as it read them (`budget_s`). The queued drop
at the predictor is tested with a real engine in tests/admission/test_transformer_deadline_drop.py.
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from transformer_helpers import HOP_TIMEOUT_S, HOPS, bytes_array, png, recorded

CLIENTS = ("rest-header", "rest-parameter", "grpc-deadline")
IMAGE = png(np.eye(8) * 16)
CLIENT_BUDGET_S = 1.5  # under the hop's own timeout (HOP_TIMEOUT_S), so the two are told apart


def send(transformer, client: str, request_id: str) -> None:
    """One digits request to the transformer with a CLIENT_BUDGET_S deadline of kind `client`
    (none for any other value); it must succeed."""
    headers = {"x-request-id": request_id}
    if client == "grpc-deadline":
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(bytes_array([IMAGE]))
        with grpcclient.InferenceServerClient(transformer.grpc_url) as grpc_client:
            grpc_client.infer("digits", [tensor], headers=headers, client_timeout=CLIENT_BUDGET_S)
        return
    data = [base64.b64encode(IMAGE).decode()]
    body: dict = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}]}
    if client == "rest-parameter":
        body["parameters"] = {"timeout": int(CLIENT_BUDGET_S * 1e6)}
    elif client == "rest-header":
        headers["x-request-timeout-ms"] = str(int(CLIENT_BUDGET_S * 1e3))
    url = f"http://{transformer.http_url}/v2/models/digits/infer"
    response = requests.post(url, json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("client", CLIENTS)
def test_the_client_deadline_reaches_the_predictor_as_the_time_left(recording_hops, hop, client):
    request_id = f"deadline-{client}-{hop}-{uuid.uuid4()}"
    send(recording_hops[hop], client, request_id)
    budget = recorded(recording_hops["record"], request_id)["budget_s"]
    # what the client gave, less the transformer's own share (decode, the hop); grpc rounds a
    # deadline on the wire and converts clocks, hence a little slack above
    assert budget is not None and CLIENT_BUDGET_S - 1.0 < budget < CLIENT_BUDGET_S + 0.2, budget


@pytest.mark.parametrize("hop", HOPS)
def test_without_a_client_deadline_the_hop_timeout_bounds_the_predictor(recording_hops, hop):
    request_id = f"no-deadline-{hop}-{uuid.uuid4()}"
    send(recording_hops[hop], "none", request_id)
    budget = recorded(recording_hops["record"], request_id)["budget_s"]
    assert budget is not None and HOP_TIMEOUT_S - 1.0 < budget < HOP_TIMEOUT_S + 0.2, budget
