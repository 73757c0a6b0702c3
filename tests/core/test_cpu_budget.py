"""CPU budget: affinity intersected with the cgroup quota, from fake cgroup files
(KBUNDLE_CGROUP_ROOT) and from a real `taskset`; the predictor sizes its engine threads from it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from metrics_text import total
from procs import free_port, wait_http

from kbundle.cpu_budget import cgroup_quota, detect
from kbundle.samples import digits_split

HOST_CPUS = len(os.sched_getaffinity(0))
needs_taskset = pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset here")


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


def test_v2_quota_150000_per_100000_is_one_and_a_half_cpus_two_threads(tmp_path):
    root = cgroup(tmp_path, {"cpu.max": "150000 100000"})
    assert cgroup_quota(root) == 1.5
    budget = detect(str(root))
    assert budget.quota == 1.5
    assert budget.cpus == min(1.5, HOST_CPUS)
    assert budget.threads == (2 if HOST_CPUS >= 2 else 1)


def test_v2_max_means_no_quota_so_the_affinity_decides(tmp_path):
    budget = detect(str(cgroup(tmp_path, {"cpu.max": "max 100000"})))
    assert budget.quota is None
    assert budget.cpus == HOST_CPUS and budget.affinity == frozenset(os.sched_getaffinity(0))


def test_v1_cfs_quota_and_unlimited(tmp_path):
    limited = cgroup(
        tmp_path / "a", {"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert detect(str(limited)).cpus == 0.5 and detect(str(limited)).threads == 1
    unlimited = cgroup(
        tmp_path / "b", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert detect(str(unlimited)).quota is None


def test_env_points_the_detection_at_fake_files(tmp_path):
    root = cgroup(tmp_path, {"cpu.max": "100000 100000"})
    code = "from kbundle.cpu_budget import cpu_budget; b = cpu_budget(); print(b.cpus, b.quota)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "KBUNDLE_CGROUP_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1.0", "1.0"]


@needs_taskset
def test_real_taskset_gives_a_budget_of_one():
    code = "from kbundle.cpu_budget import detect; b = detect(); print(b.cpus, sorted(b.affinity))"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "1.0 [0]"


@needs_taskset
def test_predictor_under_taskset_with_no_flags_uses_one_intra_op_thread(digits_v1, tmp_path):
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "predictor.log"
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "kbundle.predictors"]
    args = ["--model_name", "digits", "--model_dir", str(digits_v1)]
    ports = ["--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cmd, *args, *ports], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/v2/models/digits/ready", proc, log_path)
        gauge = total(f"127.0.0.1:{http_port}", "kbundle_cpu_budget")
        answers_each_its_own_rows(
            http_port, grpc_port, digits_v1
        )  # short batches now run on the loop
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    lines = [line for line in log_path.read_text().splitlines() if "cpu budget" in line]
    assert len(lines) == 1, log_path.read_text()[-3000:]
    assert "cpu budget 1 (affinity {0}, cgroup quota" in lines[0]
    assert "intra_op_threads 1," in lines[0]
    assert "engine_on_loop_ms 0.5)" in log_path.read_text()  # one CPU, a CPU engine: derived
    assert gauge == 1.0 and code == 0


def answers_each_its_own_rows(http_port: int, grpc_port: int, model_dir: Path) -> None:
    """48 concurrent requests of 1-3 rows, half REST, half gRPC: each label row equals what
    ONNX Runtime gives for those rows alone."""
    x = digits_split()[1].images.reshape(-1, 64).astype(np.float32)[:96]
    want = direct_labels(x, model_dir)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    def ask(tag: int) -> tuple[int, np.ndarray]:
        start, rows = (tag * 2) % 90, 1 + tag % 3
        module = httpclient if tag % 2 else grpcclient
        tensor = module.InferInput("input", [rows, 64], "FP32")
        tensor.set_data_from_numpy(x[start : start + rows])
        if module is grpcclient:
            return start, grpc.infer("digits", [tensor]).as_numpy("label")
        # tritonclient.http runs on gevent, whose hub belongs to one thread: a client per call
        with httpclient.InferenceServerClient(f"127.0.0.1:{http_port}") as http:
            return start, http.infer("digits", [tensor]).as_numpy("label")

    with ThreadPoolExecutor(8) as pool:
        for start, labels in pool.map(ask, range(48)):
            np.testing.assert_array_equal(labels, want[start : start + len(labels)])
    grpc.close()


def direct_labels(x: np.ndarray, model_dir: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    return np.concatenate([session.run(["label"], {"input": row[None]})[0] for row in x])
