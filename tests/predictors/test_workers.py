"""`--workers 2` through real processes on 127.0.0.1, with tritonclient over REST and gRPC: every
request gets exactly its own rows whichever worker takes it, /metrics on any worker counts the
whole pod, only our own workers share the ports, and a worker killed with SIGKILL is replaced
while the other keeps serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from batching_models import build_batching_model, request_arrays
from metrics_text import total
from procs import free_port, predictor_cmd, run_to_exit
from test_batching_server import check_rows, fire
from workers_helpers import requests_by_pid, start_workers, wait_gone, wait_replaced, worker_pids

MODEL = "batchy"
CONFIG = "max_batch_size: 8\nmax_batch_delay_ms: 2\nintra_op_threads: 1\n"
NEW_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module")
def model_dir(root) -> Path:
    return build_batching_model(root / MODEL, CONFIG)


@pytest.fixture(scope="module")
def server(root, model_dir):
    proc = start_workers(MODEL, model_dir, root)
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]
    assert "Traceback" not in proc.log()


def mixed(count: int, seed: int = 0) -> list[tuple[str, dict]]:
    """REST and gRPC alternating; 1-3 rows, widths 4 and 6 (two batch keys)."""
    return [
        ("rest" if i % 2 else "grpc", request_arrays(seed + i, 1 + i % 3, 4 + 2 * (i % 2)))
        for i in range(count)
    ]


def test_96_concurrent_mixed_rest_and_grpc_requests_each_get_their_rows(server):
    requests = mixed(96)
    for (_, arrays), result in zip(requests, fire(server, requests), strict=True):
        check_rows(arrays, result)


def test_metrics_on_any_worker_count_every_request_of_the_pod(server, root):
    before = {
        p: total(server.http_url, "kbundle_requests_total", protocol=p) for p in ("rest", "grpc")
    }
    requests = mixed(40, seed=1000)
    for (_, arrays), result in zip(requests, fire(server, requests), strict=True):
        check_rows(arrays, result)
    # The pool above may reuse one or two connections, and the kernel can hand them all to one
    # worker: 16 more, each on a new connection, reach both but with odds of 2 in 65,536.
    for seed in range(16):
        arrays = request_arrays(2000 + seed, 2, 4)
        check_rows(arrays, fire(server, [("rest", arrays)])[0])
    # Each scrape is a new connection, taken by either worker: all must show the same totals.
    sent = {"rest": 20 + 16, "grpc": 20}
    for _ in range(6):
        for protocol in ("rest", "grpc"):
            after = total(server.http_url, "kbundle_requests_total", protocol=protocol)
            assert after - before[protocol] == sent[protocol], (protocol, before, after)
    per_worker = [requests_by_pid(root / "metrics", pid) for pid in worker_pids(server).values()]
    assert all(count > 0 for count in per_worker), per_worker  # both served: the sum is the pod's


def test_batch_metrics_come_from_the_engine_owner(server):
    batches = total(server.http_url, "kbundle_batch_size_count", model=MODEL)
    rows = total(server.http_url, "kbundle_batch_size_sum", model=MODEL)
    assert batches > 0 and rows >= batches


@pytest.mark.parametrize("shared", ["rest+grpc", "grpc", "rest"])
def test_a_second_predictor_on_our_ports_exits_1_with_one_line(server, model_dir, shared):
    http_port = server.http_port if "rest" in shared else free_port()
    grpc_port = server.grpc_port if "grpc" in shared else free_port()
    ports = ("--http_port", str(http_port), "--grpc_port", str(grpc_port))
    result = run_to_exit(predictor_cmd(MODEL, model_dir, *ports, "--workers", "1"))
    assert result.returncode == 1, result.stderr[-2000:]
    words, port, flag = (
        ("REST port", http_port, "--http_port")
        if "rest" in shared
        else ("gRPC port", grpc_port, "--grpc_port")
    )
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"error: {words} {port} is in use by another process (choose another with {flag})"
    )
    assert "Traceback" not in result.stderr


def test_a_second_workers_predictor_on_our_grpc_port_exits_1_with_one_line(server, model_dir):
    ports = ("--http_port", str(free_port()), "--grpc_port", str(server.grpc_port))
    result = run_to_exit(predictor_cmd(MODEL, model_dir, *ports, "--workers", "2"))
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: gRPC port {server.grpc_port} is in use by another process "
        "(choose another with --grpc_port)"
    ]


def test_kill_9_of_one_worker_the_other_keeps_serving_and_it_comes_back(server):
    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_gone(victim)
    # New connections (grpcio otherwise reuses a connection of an earlier channel in this
    # process, which may be the dead worker's): only the live worker can take them.
    requests = mixed(24, seed=2000)
    results = fire(server, requests, NEW_CONNECTION)
    # Open issue (docs/workers.md): now and then the gRPC connection made right after the kill
    # is reset during its handshake, before any call is sent ("failed to connect"); resending
    # a call that never reached a server on a new connection is safe, and all that is allowed.
    unsent = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    for i in unsent:
        assert requests[i][0] == "grpc" and "failed to connect" in results[i].message()
    retried = fire(server, [requests[i] for i in unsent], NEW_CONNECTION)
    for i, result in zip(unsent, retried, strict=True):
        results[i] = result
    for (_, arrays), result in zip(requests, results, strict=True):
        check_rows(arrays, result)
    replacement = wait_replaced(server, 0, victim)
    requests = mixed(48, seed=3000)
    for (_, arrays), result in zip(requests, fire(server, requests), strict=True):
        check_rows(arrays, result)
    assert server.proc.poll() is None
    assert f"worker 0 (pid {victim}) exited with -9; restarting it" in server.log()
    assert replacement in worker_pids(server).values()
