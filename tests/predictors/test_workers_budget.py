"""The engine owner of `--workers` sizes its intra-op pool from the CPU budget less the front
ends, as docs/workers.md says, when started the way `kbundle up inferenceservices/digits.yaml`
starts the predictor (its environment from the manifest); an explicit setting is kept but warned
about when it overlaps the front ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from procs import ServerProcess, start_predictor
from slow_model import build_slow_model

from kbundle.cpu_budget import cpu_budget
from kbundle.local.manifest import load_inference_service

MODEL = "slow"
SAMPLE = Path(__file__).parents[2] / "inferenceservices" / "digits.yaml"
pytestmark = pytest.mark.skipif(cpu_budget().threads < 2, reason="a budget of 2 needs 2 CPUs")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_slow_model(Path(tmp_path_factory.mktemp("budget")) / MODEL, "max_batch_size: 8\n")


def cgroup_of_two_cpus(root: Path) -> Path:
    """A fake cgroup v2 root whose quota is 2 CPUs (limits.cpu: 2), whatever the host has."""
    root.mkdir()
    (root / "cpu.max").write_text("200000 100000\n")
    return root


def digits_predictor_env() -> dict[str, str]:
    """The predictor's environment in the sample manifest, as `kbundle up` passes it."""
    spec = load_inference_service(SAMPLE)
    env = spec.variant.predictor.env_map
    env.pop("STORAGE_URI")  # `kbundle up` fetches the model; here it is local already
    return env


def owner_budget_line(tmp_path: Path, model_dir: Path, *flags: str) -> tuple[str, str]:
    env = {
        **digits_predictor_env(),
        "KBUNDLE_CGROUP_ROOT": str(cgroup_of_two_cpus(tmp_path / "cgroup")),
    }
    log = tmp_path / "server.log"
    server: ServerProcess = start_predictor(
        MODEL, model_dir, log, "--workers", "2", *flags, env=env
    )
    assert server.stop() == 0, server.log()[-3000:]
    text = server.log()
    lines = [line for line in text.splitlines() if "[owner]: cpu budget" in line]
    assert len(lines) == 1, text[-3000:]
    return lines[0], text


def test_the_sample_manifest_owner_runs_the_budget_less_the_front_ends(tmp_path, model_dir):
    line, log = owner_budget_line(tmp_path, model_dir)
    assert "cpu budget 2 (" in line, line
    assert "intra_op_threads 1 (budget 2 less 2 front ends)" in line, line
    assert "grpc_threads" not in line, line  # the front ends serve gRPC, not the owner
    assert "is set, above" not in log


def test_an_explicit_intra_op_setting_that_overlaps_the_front_ends_is_kept_and_warned(
    tmp_path, model_dir
):
    line, log = owner_budget_line(tmp_path, model_dir, "--intra_op_threads", "2")
    assert "intra_op_threads 2 (set)" in line, line
    assert (
        "intra_op_threads 2 is set, above the 1 the cpu budget 2 leaves after 2 front ends: "
        "the engine's threads take their CPUs; unset it to get 1"
    ) in log


def owner_batching_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "[owner]: model 'slow': dynamic batching" in line]
    assert len(lines) == 1, log[-3000:]
    return lines[0]


def test_the_owner_runs_short_batches_on_its_loop_when_the_front_ends_leave_it_one_cpu(
    tmp_path, model_dir
):
    """Budget 2 less 2 front ends: the owner's loop and engine share one CPU, so a short batch
    skips the hop to the engine thread and back, as in a one-CPU single process."""
    _, log = owner_budget_line(tmp_path, model_dir)
    assert "engine_on_loop_ms 0.5)" in owner_batching_line(log)
    (tmp_path / "off").mkdir()
    _, log = owner_budget_line(tmp_path / "off", model_dir, "--engine_on_loop_ms", "0")
    assert "engine_on_loop_ms 0)" in owner_batching_line(log)
