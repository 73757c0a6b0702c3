"""A slow ONNX model for the drain and cancel tests, built with onnx.helper (no download).

Input "x" FP32 [-1, 512] -> output "y" FP32 [-1, 512] = x, through LAYERS MatMuls with the
identity matrix: the answer is exact and each request costs real engine time (tens of ms for
64 rows), so that requests queue behind each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 512
LAYERS = 100


def build_slow_model(model_dir: Path, config: str = "") -> Path:
    eye = numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "eye")
    names = ["x"] + [f"h{i}" for i in range(1, LAYERS)] + ["y"]
    nodes = [
        helper.make_node("MatMul", [a, "eye"], [b])
        for a, b in zip(names[:-1], names[1:], strict=True)
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    if config:
        (model_dir / "kbundle.yaml").write_text(config)
    return model_dir


def request_rows(tag: int, rows: int = 64) -> np.ndarray:
    """Rows whose values identify the request, so a mixed-up answer shows."""
    return np.full((rows, WIDTH), float(tag), dtype=np.float32)
