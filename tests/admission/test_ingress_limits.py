"""`kbundle up`'s ingress: the same body and header limits, and deadlines carried to the revision
(issue 12 item 5), REST and gRPC, with a slow model so requests really queue at the revision."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from admission_helpers import engine_calls, metric, rest_infer
from proc_mem import peak_mb, reset_peak, rss_mb
from queue_model import build_slow_model
from raw_http import send_headers, send_huge_body, send_slow_headers
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).parents[1] / "up"))

from up_harness import start_up  # noqa: E402

LIMIT = 16 * 1024 * 1024
ENV = {"KBUNDLE_MAX_REQUEST_BYTES": str(LIMIT), "KBUNDLE_HEADER_TIMEOUT_S": "2"}
MANIFEST = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: slow
spec:
  predictor:
    containers:
      - name: kserve-container
        image: ghcr.io/kbundle/predictor-cpu:0.1.0
        args: ["--model_name", "slow", "--model_dir", "/mnt/models"]
        env:
          - name: STORAGE_URI
            value: s3://slow-models/slow
"""
CONFIG = "max_batch_size: 1\nmax_batch_delay_ms: 0\nintra_op_threads: 1\nwarmup: false\n"


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("up-limits"))
    build_slow_model(tmp / "bucket" / "slow", CONFIG + "max_request_rows: 0\n")
    (tmp / "slow.yaml").write_text(MANIFEST)
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        proc = start_up(
            tmp / "slow.yaml", tmp, "--storage-map", f"s3://slow-models={tmp / 'bucket'}"
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield proc
    proc.stop()


def revision_url(up) -> str:
    [revision] = up.status()["revisions"]
    return f"127.0.0.1:{revision['components'][0]['http_port']}"


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 256)).astype(np.float32)


# Rows of the engine call a late request queues behind. 4,096 (~0.2 s on a fast hour of the dev
# VM) once ended before a 150 ms deadline that started after it, and the late call then ran:
# what is left of the blocker when that call arrives must outlast its deadline on any machine.
# 12,288 rows: 12 MiB, three times the engine time, under the ingress's LIMIT above.
BLOCKER_ROWS = 12288


def start_blocker(up, revision: str) -> threading.Thread:
    before = metric(revision, "kbundle_queue_wait_seconds_count")
    thread = threading.Thread(
        target=rest_infer, args=(up.rest_url, rows(BLOCKER_ROWS)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while metric(revision, "kbundle_queue_wait_seconds_count") == before:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return thread


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ingress_refuses_a_300mb_body_with_413_while_reading(up, chunked):
    pid = up.proc.pid
    before = rss_mb(pid)
    reset_peak(pid)
    status, response, sent = send_huge_body(
        up.rest_url, "/v2/models/slow/infer", 300 << 20, chunked
    )
    assert status == 413, response[:300]
    assert b"max_request_bytes" in response and str(LIMIT).encode() in response
    assert sent < 300 << 20
    assert peak_mb(pid) - before < LIMIT / 2**20 + 64


def test_ingress_grpc_refuses_a_large_message(up):
    client = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("x", [32768, 256], "FP32")  # 32 MiB
    tensor.set_data_from_numpy(np.zeros((32768, 256), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [tensor])
    client.close()
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_ingress_answers_431_and_closes_slow_headers(up):
    status, response = send_headers(up.rest_url, [("x-big", "a" * 65536)])
    assert status == 431, response[:200]
    closed, seconds = send_slow_headers(up.rest_url, 12)
    assert closed and seconds < 8


def test_rest_timeout_header_goes_through_the_ingress_to_the_revision(up):
    revision = revision_url(up)
    calls, _ = engine_calls(revision)
    blocker = start_blocker(up, revision)
    started = time.perf_counter()
    late = rest_infer(up.rest_url, rows(64), headers={"x-request-timeout-ms": "150"})
    seconds = time.perf_counter() - started
    blocker.join(120)
    assert late.status_code == 504, late.text
    assert seconds < 0.6, seconds  # answered near its deadline, not after the blocker
    time.sleep(0.3)
    assert engine_calls(revision)[0] - calls == 1  # only the blocker ran


def test_grpc_deadline_goes_through_the_ingress_to_the_revision(up):
    revision = revision_url(up)
    calls, _ = engine_calls(revision)
    blocker = start_blocker(up, revision)
    client = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("x", [64, 256], "FP32")
    tensor.set_data_from_numpy(rows(64))
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [tensor], client_timeout=0.15)
    client.close()
    blocker.join(120)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(0.3)
    assert engine_calls(revision)[0] - calls == 1
    assert requests.get(f"http://{up.rest_url}/v2/health/ready", timeout=5).ok
