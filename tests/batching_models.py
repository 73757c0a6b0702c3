"""A small ONNX model for the batching tests, built with onnx.helper (no download).

Inputs:  "x"   FP32  [-1, -1]   (the second dim is dynamic: requests of different widths must
                                 never share a batch)
         "idx" INT64 [-1, 1]    (row of a 10-row table; an index >= 10 makes ONNX Runtime's
                                 Gather fail *in the engine*, after validation passed)
Outputs: "echo" FP32 [-1, -1]   = x           (each request must get exactly its own rows)
         "sum"  FP32 [-1, 1]    = sum(x, axis=1)
         "row"  FP32 [-1, 1, 4] = TABLE[idx]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)


def build_batching_model(model_dir: Path, config: str = "") -> Path:
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    table = numpy_helper.from_array(TABLE, "table")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["echo"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["sum"], keepdims=1),
            helper.make_node("Gather", ["table", "idx"], ["row"], axis=0),
        ],
        "batching",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 1, 4]),
        ],
        [axes, table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    if config:
        (model_dir / "kbundle.yaml").write_text(config)
    return model_dir


def request_arrays(tag: int, rows: int, width: int, bad: bool = False) -> dict[str, np.ndarray]:
    """Inputs whose values identify the request (tag) and row, so a mixed-up row shows."""
    x = (tag * 1000 + np.arange(rows * width, dtype=np.float32)).reshape(rows, width)
    idx = (np.arange(rows, dtype=np.int64) % 10).reshape(rows, 1)
    if bad:
        idx[-1, 0] = 99
    return {"x": x, "idx": idx}


def expected(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x, idx = inputs["x"], inputs["idx"]
    return {"echo": x, "sum": x.sum(axis=1, keepdims=True), "row": TABLE[idx]}
