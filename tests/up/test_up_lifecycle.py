"""Scale to zero, cold start, crash restart and SIGTERM drain, on one `kbundle up` (minReplicas: 0).

The manifest (`digits-model.yaml`, `spec.predictor.model` style) sets
`autoscaling.knative.dev/scale-down-delay: 2s`, so idling takes seconds, not Knative's minute.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from up_harness import HERE, digits_rows, infer_json, revision_of, start_up, wait_for

REVISION = "digits-model-00001"


@pytest.fixture(scope="module")
def up(tmp_path_factory, sample_models: Path):
    proc = start_up(HERE / "digits-model.yaml", tmp_path_factory.mktemp("up-lifecycle"))
    yield proc
    proc.stop()


def _revision(up) -> dict:
    return up.status()["revisions"][0]


def _pids(up) -> list[int]:
    return [c["pid"] for c in _revision(up)["components"] if c["pid"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_idle_revision_scales_to_zero_then_a_request_cold_starts_it(up):
    first = _pids(up)
    assert first, _revision(up)
    wait_for(lambda: _revision(up)["state"] == "scaled-to-zero", 30, "scale to zero", up)
    assert not any(_alive(p) for p in first)  # really stopped, not just marked
    rows, labels = digits_rows(16)
    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    started = time.monotonic()
    result = grpc.infer("digits-model", [tensor], client_timeout=120)  # waits in the activator
    cold_start_s = time.monotonic() - started
    assert (result.as_numpy("label") == labels).mean() > 0.8
    assert result.get_response().model_version == REVISION
    rev = _revision(up)
    assert rev["cold_starts"] == 1 and rev["state"] == "ready"
    assert _pids(up) and _pids(up) != first
    print(f"cold start through the activator: {cold_start_s:.2f}s")


def test_a_crashed_component_is_reported_and_restarted(up):
    rows, _ = digits_rows(1)
    # Keep the revision busy so the 2 s scale-down cannot stop it around the kill.
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            try:
                infer_json(up, rows, model="digits-model", timeout=60)
            except Exception:
                pass  # requests during the crash may wait or fail; asserted below, not here
            time.sleep(0.2)

    pinger = threading.Thread(target=keep_busy)
    pinger.start()
    try:
        wait_for(lambda: _revision(up)["state"] == "ready", 60, "ready", up)
        pid = _pids(up)[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _revision(up)["components"][0]["restarts"] == 1, 30, "crash noticed", up)
        assert _revision(up)["components"][0]["last_exit"] == -signal.SIGKILL
        headers, body = infer_json(up, rows, model="digits-model")  # back after the back-off
        assert revision_of(headers, body) == REVISION
        assert _pids(up) and _pids(up)[0] != pid
    finally:
        stop.set()
        pinger.join(60)
    assert "exited with code -9; restarting" in up.log()


def test_sigterm_drains_requests_in_flight_then_stops_every_child(up):
    # Requests sent while the revision is scaled to zero sit in the activator for the whole cold
    # start: a window of seconds in which SIGTERM finds them in flight, every time.
    wait_for(lambda: _revision(up)["state"] == "scaled-to-zero", 30, "scale to zero", up)
    rows, labels = digits_rows(8)
    results: dict[int, object] = {}

    def rest(i: int) -> None:
        try:
            headers, body = infer_json(up, rows[i : i + 1], model="digits-model", timeout=120)
            results[i] = (revision_of(headers, body), body["outputs"][0]["data"][0])
        except Exception as exc:  # recorded, asserted below
            results[i] = exc

    def grpc(i: int) -> None:
        try:
            client = grpcclient.InferenceServerClient(up.grpc_url)
            tensor = grpcclient.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(rows[i : i + 1])
            result = client.infer("digits-model", [tensor], client_timeout=120)
            results[i] = (result.get_response().model_version, int(result.as_numpy("label")[0]))
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=rest if i % 2 else grpc, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: _revision(up)["inflight"] == 8, 30, "8 requests in flight", up)
    up.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert up.proc.wait(60) == 0
    failures = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not failures, {i: str(r) for i, r in failures.items()}
    assert len(results) == 8
    answered = np.array([results[i][1] for i in range(8)])
    assert all(results[i][0] == REVISION for i in range(8))
    assert (answered == labels).mean() > 0.6
    log = up.log()
    assert "draining in-flight requests" in log and "drained; stopping components" in log
    pids = [
        int(line.rsplit("pid ", 1)[1].rstrip(")"))
        for line in log.splitlines()
        if "started (pid" in line
    ]
    assert pids and not any(_alive(p) for p in pids)
