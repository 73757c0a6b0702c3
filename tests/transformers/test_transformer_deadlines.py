"""The client's deadline travels through the transformer to the predictor (issue 12 item 5): a
gRPC deadline, the V2 `timeout` parameter or the x-request-timeout-ms header arriving at the
transformer reaches the predictor as the time left (gRPC deadline / timeout header on the hop).

The predictor is `recording_v2_server.py` (our real V2 server in its own process), which records
the seconds left before each request's deadline as it read them (`budget_s`). The queued drop
at the predictor is tested with a real engine in tests/admission/test_transformer_deadline_drop.py.
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from transformer_helpers import bytes_array, png, start_recording_predictor, start_transformer

HOPS = ("grpc-v2", "v2")
CLIENTS = ("rest-header", "rest-parameter", "grpc-deadline")
IMAGE = png(np.eye(8) * 16)
CLIENT_BUDGET_S = 3.0
HOP_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def setup(sample_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deadlines")
    record = tmp / "headers.jsonl"
    predictor = start_recording_predictor(tmp, "digits", record)
    spec_dir = sample_models / "digits-transformer" / "v1"
    timeout = ["--predictor_request_timeout_seconds", str(HOP_TIMEOUT_S)]
    started = [predictor]
    try:
        for hop in HOPS:
            host = predictor.grpc_url if hop == "grpc-v2" else predictor.http_url
            started.append(
                start_transformer(tmp, "digits", spec_dir, host, hop, f"t-{hop}", timeout)
            )
        yield {"record": record, "grpc-v2": started[1], "v2": started[2]}
    finally:
        for server in reversed(started):
            server.stop()


def budget_seen(record, request_id: str) -> float | None:
    """The deadline budget the predictor read for the request with this x-request-id."""
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        if entry["headers"].get("x-request-id") == request_id:
            return entry["budget_s"]
    raise AssertionError(f"the predictor never saw x-request-id {request_id}")


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
def test_the_client_deadline_reaches_the_predictor_as_the_time_left(setup, hop, client):
    request_id = f"deadline-{client}-{hop}-{uuid.uuid4()}"
    send(setup[hop], client, request_id)
    budget = budget_seen(setup["record"], request_id)
    # what the client gave, less the transformer's own share (decode, the hop): well under 2 s
    assert budget is not None and CLIENT_BUDGET_S - 2.0 < budget < CLIENT_BUDGET_S + 0.2, budget


@pytest.mark.parametrize("hop", HOPS)
def test_without_a_client_deadline_the_hop_timeout_bounds_the_predictor(setup, hop):
    request_id = f"no-deadline-{hop}-{uuid.uuid4()}"
    send(setup[hop], "none", request_id)
    budget = budget_seen(setup["record"], request_id)
    # grpc rounds a deadline on the wire and converts clocks: a little slack above
    assert budget is not None and HOP_TIMEOUT_S - 2.0 < budget < HOP_TIMEOUT_S + 0.5, budget
