"""Fixtures shared by the hop tests."""

from __future__ import annotations

import pytest
from transformer_helpers import HOP_TIMEOUT_S, HOPS, start_recording_predictor, start_transformer


@pytest.fixture(scope="module")
def recording_hops(sample_models, tmp_path_factory):
    """The recording predictor (recording_v2_server.py) and a digits transformer in front of it
    per hop protocol ("grpc-v2", "v2"), with a HOP_TIMEOUT_S predictor timeout; "record" is the
    predictor's JSON-lines record. One set per test module."""
    tmp = tmp_path_factory.mktemp("hop")
    record = tmp / "headers.jsonl"
    predictor = start_recording_predictor(tmp, "digits", record)
    spec_dir = sample_models / "digits-transformer" / "v1"
    started = [predictor]
    try:
        for hop in HOPS:
            host = predictor.grpc_url if hop == "grpc-v2" else predictor.http_url
            timeout = ["--predictor_request_timeout_seconds", str(HOP_TIMEOUT_S)]
            started.append(
                start_transformer(tmp, "digits", spec_dir, host, hop, f"t-{hop}", timeout)
            )
        yield {"predictor": predictor, "record": record, "grpc-v2": started[1], "v2": started[2]}
    finally:
        for server in reversed(started):
            server.stop()
