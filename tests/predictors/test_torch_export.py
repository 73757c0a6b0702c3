"""ONNX / torch.export export checks: the numeric comparison against eager torch is real and can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from kbundle.predictors.onnx_engine import OnnxEngine  # noqa: E402
from kbundle.predictors.torch_export import (  # noqa: E402
    ExportMismatch,
    _keep,
    check_onnx,
    compare,
    parse_tensor_arg,
)
from kbundle.samples_torch import INPUTS, OUTPUTS, build_torch_digits, digits_model  # noqa: E402
from kbundle.settings import ModelSettings  # noqa: E402


@pytest.fixture(scope="module")
def torch_digits() -> Path:
    return build_torch_digits()


def test_exported_onnx_matches_the_torch_model_in_onnxruntime(torch_digits: Path) -> None:
    diff = check_onnx(
        torch_digits / "model.onnx", digits_model(), INPUTS, OUTPUTS, atol=1e-5, rtol=1e-4
    )
    assert diff < 1e-5
    engine = OnnxEngine.load(torch_digits / "model.onnx", ModelSettings(device="cpu"))
    assert [s.to_metadata() for s in engine.signature.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    ]
    assert [(s.name, s.datatype) for s in engine.signature.outputs] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]


def test_check_catches_an_onnx_file_that_is_not_this_model(torch_digits: Path) -> None:
    other = digits_model(seed=1)  # same architecture, other weights
    with pytest.raises(
        ExportMismatch, match=r"output '(label|probabilities)' differs from torch by up to"
    ):
        check_onnx(torch_digits / "model.onnx", other, INPUTS, OUTPUTS, atol=1e-5, rtol=1e-4)


def test_compare_names_shape_and_value_mismatches() -> None:
    a = np.zeros((2, 3), np.float32)
    assert compare([a], [a + 1e-7], ["p"], 1e-5, 0, "x") == pytest.approx(1e-7, rel=0.2)
    with pytest.raises(
        ExportMismatch, match="output 'p' has shape \\[3, 2\\], torch gives \\[2, 3\\]"
    ):
        compare([a], [a.reshape(3, 2)], ["p"], 1e-5, 0, "x")
    with pytest.raises(ExportMismatch, match="differs from torch by up to 0.5"):
        compare([a], [a + 0.5], ["p"], 1e-5, 0, "x")


def test_failed_check_leaves_no_file(tmp_path: Path) -> None:
    tmp, final = tmp_path / ".tmp-model.onnx", tmp_path / "model.onnx"
    tmp.write_bytes(b"x")

    def failing() -> float:
        raise ExportMismatch("differs")

    with pytest.raises(ExportMismatch):
        _keep(tmp, final, "ONNX", failing)
    assert not tmp.exists() and not final.exists()
    tmp.write_bytes(b"x")
    assert _keep(tmp, final, "ONNX", lambda: 0.0).path == final and final.read_bytes() == b"x"


def test_tensor_arg_parsing() -> None:
    spec = parse_tensor_arg("ids:int64:-1x-1")
    assert (spec.name, spec.datatype, spec.shape) == ("ids", "INT64", (-1, -1))
    with pytest.raises(ValueError, match="expected NAME:DATATYPE:DIMS"):
        parse_tensor_arg("ids:WORDS:-1")


def test_export_command_rejects_two_pt2_forms(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbundle.cli",
            "export",
            "--model",
            "kbundle.samples_torch:digits_model",
            "--out",
            str(tmp_path),
            "--format",
            "program,aoti",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--format takes onnx plus one of program/aoti" in proc.stderr
