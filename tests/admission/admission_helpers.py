"""Clients for the admission tests: binary V2 REST by hand (to see status and headers), gRPC via
tritonclient, raw sockets for what clients normally hide, and /metrics counters."""

from __future__ import annotations

import json
import queue
import re
import socket
import time
import urllib.request

import numpy as np
import requests
import tritonclient.grpc as grpcclient

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


def metric(url: str, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def engine_calls(url: str) -> tuple[float, float]:
    """(engine calls, rows run) so far: the batcher's batch-size histogram count and sum."""
    return (
        metric(url, "kbundle_batch_size_count", model=MODEL),
        metric(url, "kbundle_batch_size_sum", model=MODEL),
    )
