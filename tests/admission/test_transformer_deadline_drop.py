"""A deadline given to the transformer is honoured at the predictor (issue 12 items 3 and 5):
with the predictor's engine busy, a request sent through the transformer with a short deadline
is answered 504 / DEADLINE_EXCEEDED and never reaches the engine, over either hop.

Real processes: the kbundle predictor serving the slow queue model (`max_batch_size: 1`, so
engine calls count requests) and a `kind: tensor` transformer in front of it per hop protocol.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from admission_helpers import (
    MODEL,
    engine_calls,
    grpc_burst,
    metric,
    rest_infer,
    rows,
    start_blocker,
)
from procs import start_predictor, start_transformer
from queue_model import build_slow_model
from tritonclient.utils import InferenceServerException

CONFIG = (
    "max_batch_size: 1\nmax_batch_delay_ms: 0\nintra_op_threads: 1\nwarmup: false\n"
    "max_request_rows: 0\n"
)
SPEC = """\
inputs:
  - {kind: tensor, name: x, datatype: FP32, shape: [-1, 256]}
outputs:
  - {kind: tensor, tensor: y, name: y, datatype: FP32}
"""
HOPS = ("grpc-v2", "v2")
# The client's channel set-up and the transformer's share must stay well inside the deadline
# even on a loaded 2-core machine (else the request never reaches the predictor to be dropped).
DEADLINE_MS = 1000
BLOCKER_ROWS = 32768  # ~3-10 s of engine (1,024 rows: 0.1-0.3 s): still running at the deadline


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("hop-deadline"))
    predictor = start_predictor(MODEL, build_slow_model(root / MODEL, CONFIG), root / "p.log")
    spec_dir = root / "spec"
    spec_dir.mkdir()
    (spec_dir / "transformer.yaml").write_text(SPEC)
    started = {"predictor": predictor}
    try:
        for hop in HOPS:
            host = predictor.grpc_url if hop == "grpc-v2" else predictor.http_url
            started[hop] = start_transformer(MODEL, spec_dir, host, hop, root / f"{hop}.log")
        yield started
    finally:
        for server in reversed(started.values()):
            server.stop()


def drops(url: str) -> float:
    """Requests the predictor dropped unrun for a deadline or a client gone."""
    name = "kbundle_requests_dropped_total"
    return metric(url, name, reason="deadline") + metric(url, name, reason="disconnected")


def through(transformer, client: str):
    """One 64-row request through the transformer with a DEADLINE_MS deadline: the REST
    response, or the gRPC error (None when it succeeded)."""
    if client == "rest":
        headers = {"x-request-timeout-ms": str(DEADLINE_MS)}
        return rest_infer(transformer.http_url, rows(64), headers=headers)
    [result] = grpc_burst(transformer.grpc_url, [rows(64)], client_timeout=DEADLINE_MS / 1e3)
    return result if isinstance(result, InferenceServerException) else None


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("client", ["rest", "grpc"])
def test_a_deadline_at_the_transformer_drops_the_request_at_the_predictor(servers, hop, client):
    url = servers["predictor"].http_url
    calls, rows_run = engine_calls(url)
    dropped = drops(url)
    blocker = start_blocker(url, lambda: rest_infer(url, rows(BLOCKER_ROWS)))
    answer = through(servers[hop], client)
    blocker.join(120)
    if client == "rest":
        assert answer.status_code == 504, answer.text
    else:
        assert answer is not None and answer.status() == "StatusCode.DEADLINE_EXCEEDED", answer
    time.sleep(0.3)
    assert engine_calls(url) == (calls + 1, rows_run + BLOCKER_ROWS)  # the blocker alone ran
    assert drops(url) - dropped == 1
