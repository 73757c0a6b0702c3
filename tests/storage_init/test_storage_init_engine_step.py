"""The optional engine step, end to end over HTTP (no GPU / no builder here: skipped, one line)."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

import pytest
from archive_makers import tar_of_dir
from storage_sandbox import Sandbox
from storage_servers import model_tree, tree

from kbundle.storage_init import engine_step


def _with_engine_request(src: Path, out: Path) -> Path:
    shutil.copytree(src, out)
    with open(out / "kbundle.yaml", "a") as f:
        f.write("build_engine: tensorrt\n")
    lines = [
        f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}"
        for n in ("kbundle.yaml", "model-info.json", "model.onnx")
    ]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return out


def test_engine_step_is_skipped_with_one_line_without_gpu(
    sandbox: Sandbox, http_server, www: Path, digits_v1: Path
) -> None:
    if engine_step.gpu_present():
        pytest.skip("a GPU is present: this test covers the no-GPU path")
    model = _with_engine_request(digits_v1, www / "engine-src")
    tar_of_dir(model, www / "engine.tar.gz")
    result = sandbox.run(f"{http_server.url}/files/engine.tar.gz", str(sandbox.dest))
    assert result.rc == 0, result.log
    skipped = [line for line in result.log.splitlines() if "engine step skipped" in line]
    assert len(skipped) == 1, result.log
    try:  # the same checks the step makes, in the same interpreter: which skip is due here
        importlib.import_module("kbundle.predictors.engine_builder")
        expected = engine_step.tensorrt_missing_reason() or engine_step.gpu_missing_reason()
    except ImportError:
        expected = "no engine builder in this image"
    assert expected and expected in skipped[0], skipped[0]
    assert model_tree(sandbox.dest) == tree(model)


def test_no_engine_step_without_the_config_key(tmp_path: Path, digits_v1: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(digits_v1, model)
    assert engine_step.maybe_build(model) is None
