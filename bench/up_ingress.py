"""What the `kbundle up` ingress costs per request, and how long a scale-from-zero takes.

    python bench/up_ingress.py [--requests 1000]

Starts `kbundle up` on tests/up/digits-custom.yaml, sends batch-1 V2 requests one at a time
(keep-alive REST JSON with `requests`, gRPC with tritonclient) straight to the predictor and
through the ingress, alternating request by request so both see the same load, and reports p50/p99 of each and the difference; then runs
tests/up/digits-model.yaml (minReplicas 0, scale-down delay 2 s), waits for scale to zero and times
the first request (the activator's wait for the cold start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import requests
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from procs import free_port  # noqa: E402

MODEL = "digits"
BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def rest(bases: list[str], n: int) -> list[tuple[float, float]]:
    """Alternates between the targets request by request, so both see the same machine load."""
    sessions = [requests.Session() for _ in bases]
    lat: list[list[float]] = [[] for _ in bases]
    for i in range(n + 50):
        for k, (base, session) in enumerate(zip(bases, sessions, strict=True)):
            started = time.perf_counter()
            session.post(
                f"{base}/v2/models/{MODEL}/infer",
                data=BODY,
                headers={"Content-Type": "application/json"},
            ).raise_for_status()
            if i >= 50:
                lat[k].append(time.perf_counter() - started)
    return [percentiles(x) for x in lat]


def grpc(addresses: list[str], n: int) -> list[tuple[float, float]]:
    clients = [grpcclient.InferenceServerClient(a) for a in addresses]
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    lat: list[list[float]] = [[] for _ in addresses]
    for i in range(n + 50):
        for k, client in enumerate(clients):
            started = time.perf_counter()
            client.infer(MODEL, [tensor])
            if i >= 50:
                lat[k].append(time.perf_counter() - started)
    return [percentiles(x) for x in lat]


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/kbundle/status", timeout=10) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def kbundle_up(manifest: str, state: Path):
    """A running `kbundle up` on `manifest`: yields (REST port, gRPC port, seconds to serving)."""
    port, gport = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "kbundle.cli",
        "up",
        str(ROOT / manifest),
        "--port",
        str(port),
        "--grpc-port",
        str(gport),
        "--state-dir",
        str(state),
        "--quiet",
        "--watch-interval",
        "0",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                status(port)
                break
            except OSError:
                time.sleep(0.1)
        yield port, gport, time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kbundle-bench-up-"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with kbundle_up("tests/up/digits-custom.yaml", tmp) as (port, gport, took):
        print(f"kbundle up to serving (minReplicas 1): {took:.2f} s")
        component = status(port)["revisions"][0]["components"][0]
        direct_rest = component["ready_url"].split("/v2/")[0]
        direct_grpc = f"127.0.0.1:{component['grpc_port']}"
        rows = [
            ("REST JSON", *rest([direct_rest, f"http://127.0.0.1:{port}"], args.requests)),
            ("gRPC", *grpc([direct_grpc, f"127.0.0.1:{gport}"], args.requests)),
        ]
    print(
        f"{'':10} {'direct p50':>11} {'ingress p50':>12} {'added':>7} {'direct p99':>11} {'ingress p99':>12}"
    )
    for name, (d50, d99), (i50, i99) in rows:
        print(
            f"{name:10} {d50:10.2f}ms {i50:11.2f}ms {i50 - d50:6.2f}ms {d99:10.2f}ms {i99:11.2f}ms"
        )
    with kbundle_up("tests/up/digits-model.yaml", tmp) as (port, _, _):
        while status(port)["revisions"][0]["state"] != "scaled-to-zero":
            time.sleep(0.1)
        started = time.perf_counter()
        url = f"http://127.0.0.1:{port}/v2/models/digits-model/infer"
        requests.post(
            url, data=BODY, headers={"Content-Type": "application/json"}, timeout=120
        ).raise_for_status()
        print(
            f"scale from zero: first request answered after {time.perf_counter() - started:.2f} s (activator)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
