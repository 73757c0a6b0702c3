"""`kbundle up` refusals: ports in use, images that are not ours, a second `up` of the same service."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from procs import free_port
from up_harness import HERE, up_cmd


def _up(manifest: Path, state: Path, port: int, grpc_port: int) -> subprocess.CompletedProcess:
    cmd = up_cmd(manifest, state, port, grpc_port)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("which, flag", [("rest", "--port"), ("grpc", "--grpc-port")])
def test_a_port_in_use_gets_a_clear_message_and_starts_nothing(tmp_path, which, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        ports = (busy, free_port()) if which == "rest" else (free_port(), busy)
        out = _up(HERE / "digits-custom.yaml", tmp_path / "state", *ports)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"port {busy} on 127.0.0.1 is already in use" in out.stderr and flag in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state" / "digits" / "logs").exists()  # no component was started


def test_an_image_that_is_not_ours_is_refused(tmp_path):
    manifest = tmp_path / "foreign.yaml"
    text = (HERE / "digits-custom.yaml").read_text()
    manifest.write_text(
        text.replace("ghcr.io/kbundle/predictor-cpu:0.1.0", "docker.io/acme/sklearn-server:2")
    )
    out = _up(manifest, tmp_path / "state", free_port(), free_port())
    assert out.returncode == 1
    assert (
        "spec.predictor.containers[0].image 'docker.io/acme/sklearn-server:2' is not a kbundle component"
        in out.stderr
    )
    assert "kbundle.io/component" in out.stderr  # says how to opt a custom image in


def test_a_missing_local_model_folder_is_named(tmp_path):
    manifest = tmp_path / "missing.yaml"
    text = (HERE / "digits-custom.yaml").read_text()
    manifest.write_text(
        text.replace("s3://kbundle-models/digits/v1", str(tmp_path / "no-such-model"))
    )
    out = _up(manifest, tmp_path / "state", free_port(), free_port())
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no-such-model" in out.stdout + out.stderr


def test_a_component_that_cannot_start_fails_the_rollout_fast_with_its_reason(tmp_path):
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    (empty_model / "README").write_text("no model file here\n")
    manifest = tmp_path / "empty.yaml"
    text = (HERE / "digits-custom.yaml").read_text()
    manifest.write_text(text.replace("s3://kbundle-models/digits/v1", str(empty_model)))
    out = _up(manifest, tmp_path / "state", free_port(), free_port())
    assert out.returncode == 1, out.stdout + out.stderr
    assert "revision digits-00001 did not become ready" in out.stderr
    assert (
        "digits-00001/predictor not ready, exited with" in out.stderr
    )  # the component's own words follow
    assert "digits-00001-predictor.log" in out.stderr
