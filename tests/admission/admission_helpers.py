"""Clients for the admission tests: binary V2 REST by hand (to see status and headers), gRPC via
tritonclient, raw sockets for what clients normally hide, and /metrics counters."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import requests
import tritonclient.grpc as grpcclient
from metrics_text import total

MODEL = "slow"  # the slow model's name, here and behind the ingress


def rest_body(x: np.ndarray, parameters: dict | None = None) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    if parameters:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + x.tobytes(), headers


def rest_infer(
    url: str, x: np.ndarray, parameters: dict | None = None, headers: dict | None = None
) -> requests.Response:
    body, base = rest_body(x, parameters)
    return requests.post(
        f"http://{url}/v2/models/{MODEL}/infer",
        data=body,
        headers={**base, **(headers or {})},
        timeout=120,
    )


def rest_output(resp: requests.Response) -> np.ndarray:
    length = int(resp.headers["Inference-Header-Content-Length"])
    header = json.loads(resp.content[:length])
    shape = header["outputs"][0]["shape"]
    return np.frombuffer(resp.content[length:], dtype=np.float32).reshape(shape)


def grpc_burst(url: str, arrays: list[np.ndarray], **kwargs) -> list:
    """Send all at once over one channel; each result is an InferResult or the exception."""
    client = grpcclient.InferenceServerClient(url)
    done: queue.Queue = queue.Queue()
    try:
        for i, x in enumerate(arrays):
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            client.async_infer(
                MODEL,
                [tensor],
                callback=lambda result, error, i=i: done.put((i, result, error)),
                **kwargs,
            )
        results: list = [None] * len(arrays)
        for _ in arrays:
            i, result, error = done.get(timeout=60)
            results[i] = error if error is not None else result
        return results
    finally:
        client.close()


def send_and_leave(url: str, x: np.ndarray, wait_s: float) -> socket.socket:
    """A REST request whose client gives up after `wait_s` (the socket is closed unanswered)."""
    body, headers = rest_body(x)
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {url}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    time.sleep(wait_s)
    sock.close()
    return sock


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of metric `name`'s samples with these labels (tests/metrics_text.py reads it)."""
    return total(url, name, **labels)


def engine_calls(url: str) -> tuple[float, float]:
    """(engine calls, rows run) so far: the batcher's batch-size histogram count and sum."""
    return (
        metric(url, "kbundle_batch_size_count", model=MODEL),
        metric(url, "kbundle_batch_size_sum", model=MODEL),
    )


# -- queueing: a busy engine, a full queue ------------------------------------------------------
def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 256)).astype(np.float32)


def in_background(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def started_batches(url: str) -> float:
    return metric(url, "kbundle_queue_wait_seconds_count", model=MODEL)


def start_blocker(url: str, send=None) -> threading.Thread:
    """A 4,096-row request (~1 s of engine), returned once its engine call has started."""
    before = started_batches(url)
    thread = in_background(send or (lambda: rest_infer(url, rows(4096))))
    deadline = time.monotonic() + 30
    while started_batches(url) == before:
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    return thread


def concurrently(fn, count: int) -> list:
    out: list = [None] * count
    threads = [in_background(lambda i=i: out.__setitem__(i, fn(i))) for i in range(count)]
    for thread in threads:
        thread.join(120)
    return out


def fill_queue(url: str, x: np.ndarray, out: list, blocker_rows: int = 16384) -> list:
    """The queue full (max_queue_size 2): a blocker of `blocker_rows` rows (seconds of engine
    time) in flight, two `x` queued behind it and two more refused. Returns once the refusals
    were counted, while the blocker still runs; every response goes to `out`.

    Keep `x` small: its four bodies must be read and queued before the blocker ends (with 8 MB
    followers and a blocker their own size, a slow machine read them too late and the queue
    never filled). rows(n) with seed 0 is a prefix of the blocker's rows, so outputs can be
    checked with expected(rows(len(output)))."""
    refused = metric(url, "kbundle_requests_dropped_total", reason="queue_full")
    blocker = rows(blocker_rows)
    threads = [start_blocker(url, lambda: out.append(rest_infer(url, blocker)))]
    for _ in range(4):
        threads.append(in_background(lambda: out.append(rest_infer(url, x))))
    deadline = time.monotonic() + 30
    while metric(url, "kbundle_requests_dropped_total", reason="queue_full") < refused + 2:
        assert time.monotonic() < deadline, "the queue never filled"
        time.sleep(0.002)
    return threads


def rest_leavers(url: str, count: int = 20) -> None:
    """`count` REST clients that send 64 rows each and leave 30 ms later, unanswered."""
    leavers = [in_background(send_and_leave, url, rows(64, s), 0.03) for s in range(count)]
    for thread in leavers:
        thread.join(30)


def cost_of_leavers(url: str, leave: Callable[[], None], blocker_rows: int) -> tuple[float, float]:
    """(rows the engine ran, requests dropped as `disconnected`) while a blocker of
    `blocker_rows` runs and `leave()` sends calls queued behind it whose clients go away."""
    _, rows_run = engine_calls(url)
    gone = metric(url, "kbundle_requests_dropped_total", reason="disconnected")
    blocker = start_blocker(url, lambda: rest_infer(url, rows(blocker_rows)))
    leave()
    blocker.join(120)
    time.sleep(0.3)  # the blocker's answer is back; the dropped ones were counted at dispatch
    ran = engine_calls(url)[1] - rows_run
    return ran, metric(url, "kbundle_requests_dropped_total", reason="disconnected") - gone
