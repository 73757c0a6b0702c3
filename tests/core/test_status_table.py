"""The one status table: transport-free errors, their HTTP and gRPC codes, and metric outcomes."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from kbundle.errors import (
    ClientCancelled,
    DeadlineExceeded,
    EngineError,
    InvalidRequest,
    ModelNotFoundError,
    ModelUnavailable,
    PayloadTooLarge,
    QueueFull,
    RequestHeadersTooLarge,
    Status,
)
from kbundle.status import TABLE, error_outcome, from_grpc, from_http, grpc_code, http_status


def test_errors_module_imports_no_transport():
    code = "import sys, kbundle.errors; print('grpc' in sys.modules, 'kserve' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("error", "http", "code", "outcome"),
    [
        (InvalidRequest("x"), 400, grpc.StatusCode.INVALID_ARGUMENT, "client_error"),
        (ModelNotFoundError("x"), 404, grpc.StatusCode.NOT_FOUND, "client_error"),
        (ModelUnavailable("x"), 503, grpc.StatusCode.UNAVAILABLE, "server_error"),
        (EngineError("x"), 500, grpc.StatusCode.INTERNAL, "server_error"),
        (ClientCancelled("x"), 499, grpc.StatusCode.CANCELLED, "cancelled"),
        (PayloadTooLarge("x"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "dropped"),
        (QueueFull("x", retry_after_s=2.5), 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "dropped"),
        (DeadlineExceeded("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED, "dropped"),
        (RequestHeadersTooLarge("x"), 431, grpc.StatusCode.RESOURCE_EXHAUSTED, "dropped"),
    ],
)
def test_each_error_has_one_http_status_one_grpc_code_and_an_outcome(error, http, code, outcome):
    assert (error.http_status, error.grpc_code, error_outcome(error)) == (http, code, outcome)
    assert (http_status(error.status), grpc_code(error.status)) == (http, code)


def test_queue_full_carries_its_retry_hint():
    assert QueueFull("queue full", retry_after_s=2.5).retry_after_s == 2.5


def test_every_status_is_in_the_table_and_peer_codes_read_back():
    assert set(TABLE) == set(Status)
    for status, (http, code) in TABLE.items():
        assert grpc_code(from_grpc(code)) == code, status
        assert http_status(from_http(http)) == http, status
    assert from_http(418) is Status.FAILED_PRECONDITION and from_http(599) is Status.BAD_GATEWAY
    assert from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED) is Status.RESOURCE_EXHAUSTED
