"""An ONNX model whose engine time grows with the rows sent, for queueing tests (no download).

"x" FP32 [-1, 256] -> LAYERS x (MatMul 256x256, Tanh) -> "y" FP32 [-1, 256]; "y" is also a
checkable function of "x" (`expected`), so answered rows can be verified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 256
LAYERS = 24


def weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)


def build_slow_model(model_dir: Path, config: str, layers: int = LAYERS) -> Path:
    nodes, name = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [name, "w"], [f"m{i}"]))
        name = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [name]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weights(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    (model_dir / "kbundle.yaml").write_text(config)
    return model_dir


def expected(x: np.ndarray, layers: int = LAYERS) -> np.ndarray:
    w = weights()
    for _ in range(layers):
        x = np.tanh(x @ w)
    return x
