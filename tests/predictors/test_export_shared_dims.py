"""`kbundle export` on a model whose two inputs share a dynamic dim (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

pytest.importorskip("torch", reason="the torch extra is not installed")

from kbundle.predictors.torch_engine import TorchEngine  # noqa: E402
from kbundle.settings import ModelSettings  # noqa: E402

MODEL = "kbundle.samples_text:text_encoder"


def export(out: Path, *inputs: str, formats: str = "onnx,program") -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kbundle.cli", "export", "--model", MODEL, "--out", str(out)]
    for spec in inputs:
        args += ["--input", spec]
    return subprocess.run([*args, "--format", formats], capture_output=True, text=True, timeout=300)


def test_unnamed_dims_that_must_agree_export_and_come_out_shared(tmp_path: Path) -> None:
    proc = export(tmp_path, "input_ids:INT64:-1x-1", "attention_mask:INT64:-1x-1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    onnx_dims = [a.shape for a in ort.InferenceSession(str(tmp_path / "model.onnx")).get_inputs()]
    assert onnx_dims[0] == onnx_dims[1] and all(isinstance(d, str) for d in onnx_dims[0])
    engine = TorchEngine.load(tmp_path / "model.pt2", ModelSettings(device="cpu"))
    shared = engine.signature.shared_dims()  # both dims, by torch's symbols
    assert set(shared) == set(engine.signature.inputs[0].dim_names) and len(shared) == 2


def test_named_dims_reach_the_served_signature(tmp_path: Path) -> None:
    proc = export(tmp_path, "input_ids:INT64:b,s", "attention_mask:INT64:b,s", formats="program")
    assert proc.returncode == 0, proc.stderr[-2000:]
    engine = TorchEngine.load(tmp_path / "model.pt2", ModelSettings(device="cpu"))
    assert [s.dim_names for s in engine.signature.inputs] == [("b", "s"), ("b", "s")]
    assert [s.shape for s in engine.signature.inputs] == [(-1, -1), (-1, -1)]


def test_a_failed_export_says_why_in_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    # onnx succeeds first, then the program export finds `s` and `t` must be equal.
    proc = export(tmp_path, "input_ids:INT64:b,s", "attention_mask:INT64:b,t")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Constraints violated" in errors[0]
    assert "name it in each --input" in errors[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
