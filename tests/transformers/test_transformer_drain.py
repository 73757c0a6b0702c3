"""SIGTERM drains the transformer: readiness false at once, every call already received finishes
its hop to the predictor (REST and gRPC clients), then exit 0. The predictor is the recording V2
server, whose `Bearer slow` answer takes 4 s, so the calls are mid-hop when the signal comes."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request

from test_transformer_hop_errors import _grpc, _rest
from transformer_helpers import start_recording_predictor, start_transformer

SLOW = {"authorization": "Bearer slow"}
DRAIN_S = 15


def ready_status(server) -> int:
    try:
        url = f"http://{server.http_url}/v2/models/digits/ready"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_lets_in_flight_hops_finish_and_exits_0(sample_models, tmp_path):
    predictor = start_recording_predictor(tmp_path, "digits", tmp_path / "headers.jsonl")
    spec_dir = sample_models / "digits-transformer" / "v1"
    drain = ["--drain_timeout_seconds", str(DRAIN_S)]
    transformer = start_transformer(
        tmp_path, "digits", spec_dir, predictor.grpc_url, "grpc-v2", "t", drain
    )
    results: dict[str, object] = {}

    def call(key: str) -> None:
        try:
            if key.startswith("rest"):
                response = _rest(transformer, SLOW)
                results[key] = response.status_code
            else:
                results[key] = _grpc(transformer, SLOW).as_numpy("labels")[0, 0]
        except Exception as exc:  # recorded, asserted below
            results[key] = exc

    keys = [f"{kind}-{i}" for kind in ("rest", "grpc") for i in range(4)]
    threads = [threading.Thread(target=call, args=(key,)) for key in keys]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # all 8 are waiting on the 4 s predictor
        transformer.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        status = 200
        while status == 200 and time.monotonic() - sent < 1.0:
            status = ready_status(transformer)
        for thread in threads:
            thread.join(30)
        code = transformer.proc.wait(DRAIN_S + 10)
        elapsed = time.monotonic() - sent
    finally:
        transformer.stop()
        predictor.stop()
    assert status == 503
    assert results == {
        **{f"rest-{i}": 200 for i in range(4)},
        **{f"grpc-{i}": b"7" for i in range(4)},
    }, transformer.log()[-3000:]
    assert code == 0 and elapsed < DRAIN_S, (code, elapsed)
