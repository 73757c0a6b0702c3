"""`analyze --prometheus` on kbundle's own metric names (the contract of issue 13.1), scraped by
a real Prometheus from a stand-in exporter (contract_exporter.py) until the predictor of branch
`core` exposes them; the end-to-end tests in test_canary_prometheus.py switch to these metrics by
themselves once it does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prom_harness import free_port, start_prometheus, wait_for_series

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    procs, targets = [], []
    for scenario in ("cancels", "slow"):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "contract_exporter.py"), str(port), scenario]
            )
        )
        labels = {"namespace": "ns", "isvc": scenario, "component": "predictor"}
        targets.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    sd = tmp / "targets.json"
    sd.write_text(json.dumps(targets))
    server = start_prometheus(tmp, sd)
    wait_for_series(server, 'kbundle_request_duration_seconds_bucket{isvc="slow"}')
    time.sleep(8)  # traffic of both revisions past the 1 s warm-up
    yield server
    server.stop()
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def analyze(prom, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kbundle.cli",
            "canary",
            "analyze",
            name,
            "--prometheus",
            prom.url,
            "--namespace",
            "ns",
            "--window",
            "30s",
            "--warmup",
            "1s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_client_cancels_do_not_count_against_the_canary(prom):
    result = analyze(prom, "cancels")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(kbundle metrics)" in result.stdout and "errors    0" in result.stdout


def test_three_times_slower_canary_rolls_back_on_kbundle_metrics(prom):
    result = analyze(prom, "slow")
    print(result.stdout)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "(kbundle metrics)" in result.stdout and "p99" in result.stdout
