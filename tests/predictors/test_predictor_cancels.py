"""A gRPC client's cancel or deadline is the client leaving, not the revision's fault: counted
as `cancelled`, never INTERNAL/server_error, never logged at ERROR with a traceback. A second
predictor on a port in use exits 1 with one line naming the port and the flag."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from lifecycle_helpers import MODEL, grpc_message, infer_call, start_slow
from metrics_text import total
from procs import free_port

REQUESTS = "kbundle_requests_total"
ROWS = 640


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Enough handler threads that every call is inside the predictor when it is cancelled, and
    # 640-row calls (~0.5 s each, one per batch), so that all 24 are received before any ends.
    proc = start_slow(
        tmp_path_factory.mktemp("cancels"),
        env={"KBUNDLE_GRPC_THREADS": "64"},
        max_batch_size=1024,
    )
    yield proc
    proc.stop()


def outcomes(server) -> dict[str, float]:
    names = ("ok", "client_error", "server_error", "cancelled")
    return {o: total(server.http_url, REQUESTS, model=MODEL, outcome=o) for o in names}


def test_24_client_cancels_and_deadlines_count_as_cancelled_not_server_errors(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = infer_call(channel)
        cancelled = [call.future(grpc_message(tag, ROWS), timeout=60) for tag in range(12)]
        expired = [call.future(grpc_message(tag, ROWS), timeout=1.0) for tag in range(12, 24)]
        time.sleep(0.5)
        for future in cancelled:
            future.cancel()
        for future in expired:
            assert future.exception(10) is None or future.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.OK,
            )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen = outcomes(server)
        if seen["ok"] + seen["cancelled"] >= 24:
            break
        time.sleep(0.2)
    assert seen["server_error"] == 0 and seen["client_error"] == 0, seen
    assert seen["ok"] + seen["cancelled"] == 24 and seen["cancelled"] >= 20, seen
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def second_predictor(digits_v1, http_port: int, grpc_port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kbundle.predictors",
            "--model_name",
            "digits",
            "--model_dir",
            str(digits_v1),
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("which", ["grpc", "rest"])
def test_second_predictor_on_a_port_in_use_exits_1_naming_port_and_flag(server, digits_v1, which):
    if which == "grpc":
        ports, port, words = (free_port(), server.grpc_port), server.grpc_port, "gRPC port"
        flag = "--grpc_port"
    else:
        ports, port, words = (server.http_port, free_port()), server.http_port, "REST port"
        flag = "--http_port"
    result = second_predictor(digits_v1, *ports)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"error: {words} {port} is in use by another process (choose another with {flag})"
    )
    assert "Traceback" not in result.stderr
