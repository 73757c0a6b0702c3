"""Helpers for the `--workers` tests: start a predictor with workers, find its processes in the
supervisor's log, and read one process's request counters from the multiprocess metrics files."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from procs import ServerProcess, start_predictor, wait_until
from prometheus_client import CollectorRegistry, multiprocess


def start_workers(
    model: str, model_dir: Path, root: Path, *flags: str, workers: int = 2
) -> ServerProcess:
    """The predictor with `--workers`, its metrics files in `root/metrics`, ready on REST."""
    metrics = root / "metrics"
    metrics.mkdir(exist_ok=True)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics), "KBUNDLE_WORKERS": "1"}
    log = root / "server.log"
    server = start_predictor(model, model_dir, log, "--workers", str(workers), *flags, env=env)
    wait_until(lambda: serving(server) >= workers, 60, "workers serving", server.proc, log)
    return server


def serving(server: ServerProcess) -> int:
    """Workers whose gRPC server started (REST is served from the shared socket already)."""
    return server.log().count("[worker]: gRPC V2 on port")


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """Worker index -> pid of its latest start."""
    return {
        int(i): int(pid)
        for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", server.log())
    }


def connected(server: ServerProcess) -> set[int]:
    """Pids of workers that reached the engine owner (so serve)."""
    return {int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) connected", server.log())}


def owner_pid(server: ServerProcess) -> int:
    return int(re.search(r"engine owner started \(pid (\d+)\)", server.log()).group(1))


def wait_replaced(server: ServerProcess, index: int, old_pid: int, timeout: float = 60) -> int:
    """The pid of worker `index` once a new process replaced `old_pid` and connected."""

    def ready() -> bool:
        pid = worker_pids(server).get(index)
        return pid != old_pid and pid in connected(server)

    wait_until(ready, timeout, f"worker {index} restarted", server.proc, server.log_path)
    return worker_pids(server)[index]


def requests_by_pid(metrics_dir: Path, pid: int) -> float:
    """kbundle_requests_total summed over the counters one process wrote."""
    source = metrics_dir / f"counter_{pid}.db"
    if not source.exists():
        return 0.0
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(source, folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, folder)
        return sum(
            s.value
            for metric in registry.collect()
            for s in metric.samples
            if s.name == "kbundle_requests_total"
        )


def alive(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
