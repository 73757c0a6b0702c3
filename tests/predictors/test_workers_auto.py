"""`--workers auto` (the default) follows the CPU budget: one CPU (taskset -c 0) is today's single
process with no supervisor, owner or shared memory; a budget of N starts N front ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from procs import free_port, launch, predictor_cmd, wait_http
from slow_model import build_slow_model

from kbundle.cpu_budget import cpu_budget

MODEL = "slow"
AUTO = {"KBUNDLE_WORKERS": "auto"}  # the suite pins 1 (tests/conftest.py); this is the default


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_slow_model(Path(tmp_path_factory.mktemp("auto")) / MODEL, "max_batch_size: 8\n")


def run_until_ready(cmd: list[str], log: Path) -> str:
    http = cmd[cmd.index("--http_port") + 1]
    proc = launch(cmd, log, AUTO)
    try:
        wait_http(f"http://127.0.0.1:{http}/v2/models/{MODEL}/ready", proc, log)
    finally:
        proc.terminate()
        proc.wait(30)
    return log.read_text()


def ports() -> tuple[str, ...]:
    return ("--http_port", str(free_port()), "--grpc_port", str(free_port()))


def test_auto_with_one_cpu_is_the_single_process(model_dir, tmp_path):
    log = run_until_ready(
        ["taskset", "-c", "0", *predictor_cmd(MODEL, model_dir, *ports())], tmp_path / "one.log"
    )
    assert "cpu budget 1 (affinity {0}" in log
    assert "engine owner" not in log and "[worker]" not in log and "[predictor]" in log


@pytest.mark.skipif(cpu_budget().threads < 2, reason="one CPU here: the case above covers it")
def test_auto_with_a_budget_of_n_starts_n_front_ends(model_dir, tmp_path):
    count = cpu_budget().threads
    log_path = tmp_path / "n.log"
    run_until_ready(predictor_cmd(MODEL, model_dir, *ports()), log_path)
    log = log_path.read_text()
    assert "engine owner started (pid" in log and f"{count} workers follow" in log
