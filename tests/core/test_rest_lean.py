"""The lean REST infer path (kbundle.serving.rest_lean) on a real predictor, over raw sockets:
what HTTP/1.1 clients rely on and tritonclient does not show (pipelining, Expect: 100-continue,
chunked bodies, HTTP/1.0, keep-alive, refusals before the body, disconnects), next to routes that
still go to kserve's app on the same connection."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests
from batching_models import TABLE, build_batching_model
from metrics_text import total
from procs import start_predictor

MODEL = "lean"
PATH = f"/v2/models/{MODEL}/infer"
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("rest-lean"))
    model_dir = build_batching_model(tmp / "model", "warmup: false\n")
    proc = start_predictor(
        MODEL, model_dir, tmp / "predictor.log", env={"KBUNDLE_MAX_REQUEST_BYTES": str(LIMIT)}
    )
    yield proc
    proc.stop()


def body(values: list[float], idx: int = 1) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, len(values)], "datatype": "FP32", "data": values},
                {"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [idx]},
            ]
        }
    ).encode()


def head(length: int, path: str = PATH, extra: str = "", version: str = "1.1") -> bytes:
    start = f"POST {path} HTTP/{version}\r\nHost: test\r\nContent-Type: application/json\r\n"
    return (start + f"Content-Length: {length}\r\n{extra}\r\n").encode()


def request(payload: bytes, path: str = PATH, version: str = "1.1") -> bytes:
    return head(len(payload), path, version=version) + payload


EXPECT = "Expect: 100-continue\r\n"


class Reader:
    """HTTP/1.1 responses read one at a time from a socket (Content-Length framed)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""
        sock.settimeout(10)

    def _fill(self) -> bool:
        part = self.sock.recv(65536)
        self.buffer += part
        return bool(part)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-response: {self.buffer[:200]!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, content

    def closed(self) -> bool:
        try:
            return not self.buffer and not self._fill()
        except (ConnectionResetError, TimeoutError):
            return True


def connect(server) -> tuple[socket.socket, Reader]:
    host, port = server.http_url.split(":")
    sock = socket.create_connection((host, int(port)))
    return sock, Reader(sock)


def echo(content: bytes) -> list[float]:
    outputs = {o["name"]: o for o in json.loads(content)["outputs"]}
    return outputs["echo"]["data"]


def test_keep_alive_many_requests_each_gets_its_rows(server):
    sock, reader = connect(server)
    with sock:
        for i in range(20):
            sock.sendall(request(body([float(i), i + 0.5])))
            status, headers, content = reader.response()
            assert status == 200, content
            assert echo(content) == [float(i), i + 0.5]
            assert headers["content-type"] == "application/json"
            assert "date" in headers and "connection" not in headers


def test_pipelined_requests_are_answered_in_order_with_app_routes_between(server):
    """Three infers and a health check in one write: four answers, in the order sent."""
    wire = (
        request(body([1.0]))
        + b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\n\r\n"
        + request(body([2.0, 3.0]), path=f"/v2/models/{MODEL}/versions/1/infer")
        + request(body([4.0], idx=3) + b"", path=PATH + "?trace=1")
    )
    sock, reader = connect(server)
    with sock:
        sock.sendall(wire)
        answers = [reader.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200], answers
    assert echo(answers[0][2]) == [1.0]
    assert json.loads(answers[1][2])["ready"] is True
    assert echo(answers[2][2]) == [2.0, 3.0]
    outputs = {o["name"]: o for o in json.loads(answers[3][2])["outputs"]}
    assert outputs["row"]["data"] == TABLE[3].tolist()


def test_expect_100_continue_gets_continue_then_the_answer(server):
    payload = body([7.0, 8.0])
    sock, reader = connect(server)
    with sock:
        sock.sendall(head(len(payload), extra=EXPECT))
        interim, _, _ = reader.response()
        assert interim == 100
        sock.sendall(payload)
        status, _, content = reader.response()
    assert status == 200 and echo(content) == [7.0, 8.0]


def test_expect_100_continue_over_the_limit_is_413_without_continue(server):
    sock, reader = connect(server)
    with sock:
        sock.sendall(head(LIMIT + 1, extra=EXPECT))
        status, headers, content = reader.response()
        assert status == 413
        assert headers["connection"] == "close"
        error = json.loads(content)["error"]
        assert str(LIMIT + 1) in error and "max_request_bytes" in error
        assert reader.closed()


def test_chunked_body_is_served_and_an_oversized_one_refused(server):
    payload = body([5.0, 6.0])
    chunks = b"".join(
        b"%x\r\n" % len(payload[i : i + 7]) + payload[i : i + 7] + b"\r\n"
        for i in range(0, len(payload), 7)
    )
    chunked = f"POST {PATH} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock, reader = connect(server)
    with sock:
        sock.sendall(chunked.encode() + chunks + b"0\r\n\r\n")
        status, _, content = reader.response()
        assert status == 200 and echo(content) == [5.0, 6.0]
        big = b"\0" * (256 * 1024)
        sock.sendall(chunked.encode())
        try:
            for _ in range(8):  # 2 MiB against a 1 MiB limit
                sock.sendall(b"%x\r\n" % len(big) + big + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, content = reader.response()
    assert status == 413 and headers["connection"] == "close"
    assert "max_request_bytes" in json.loads(content)["error"]


def test_http_1_0_is_answered_and_closed(server):
    sock, reader = connect(server)
    with sock:
        sock.sendall(request(body([9.0]), version="1.0"))
        status, headers, content = reader.response()
        assert status == 200 and echo(content) == [9.0]
        assert headers["connection"] == "close"
        assert reader.closed()


def test_bad_requests_are_4xx_and_the_connection_stays_usable(server):
    sock, reader = connect(server)
    with sock:
        sock.sendall(request(b"{not json"))
        status, _, content = reader.response()
        assert status == 400 and "JSON" in json.loads(content)["error"]
        sock.sendall(request(body([1.0]), path="/v2/models/nope/infer"))
        status, _, content = reader.response()
        assert status == 404 and "nope" in json.loads(content)["error"]
        sock.sendall(request(body([3.0])))
        status, _, content = reader.response()
        assert status == 200 and echo(content) == [3.0]


def test_other_methods_and_paths_still_reach_the_app(server):
    base = f"http://{server.http_url}"
    assert requests.get(base + PATH, timeout=5).status_code == 405
    metadata = requests.get(f"{base}/v2/models/{MODEL}", timeout=5)
    assert metadata.ok and metadata.json()["name"] == MODEL


def test_every_lean_call_is_counted_once_by_outcome(server):
    def counted(outcome: str) -> float:
        labels = {"model": MODEL, "protocol": "rest", "outcome": outcome}
        return total(server.http_url, "kbundle_requests_total", **labels)

    ok, bad = counted("ok"), counted("client_error")
    sock, reader = connect(server)
    with sock:
        sock.sendall(request(body([1.0])) * 3 + request(b"[]"))
        statuses = [reader.response()[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 400]
    assert counted("ok") - ok == 3
    assert counted("client_error") - bad == 1
