"""Benchmark models, built from numpy + onnx.helper (no download).

- mlp:  FP32 [-1, 256] -> Gemm 1024 -> Relu -> Gemm 1024 -> Relu -> Gemm 10 -> [-1, 10]
        (heavy enough that batching matters: ~1.3 M multiply-adds per row)
- tiny: FP32 [-1, 16] -> Mul 2 -> Add 1 -> [-1, 16] (pure protocol overhead)

`python bench/models.py OUT_DIR` writes OUT_DIR/{mlp,tiny}/model.onnx.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.15


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp(path: Path, sizes: tuple[int, ...] = (256, 1024, 1024, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = "output" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _save(graph, path)


def tiny(path: Path, width: int = 16) -> Path:
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        [two, one],
    )
    return _save(graph, path)


def wide(path: Path) -> Path:
    """An MLP whose engine time dominates (FP32 [-1, 256] -> Gemm 4096 -> Relu -> Gemm 4096 ->
    Relu -> Gemm 10): at concurrency 32 the engine, not the protocol, is the limit, as on a GPU
    serving a real model; batching across `--workers` front ends matters there."""
    return mlp(path, sizes=(256, 4096, 4096, 10))


BUILDERS = {"mlp": mlp, "tiny": tiny, "wide": wide}
INPUT_WIDTH = {"mlp": 256, "tiny": 16, "wide": 256}


def build_all(out_dir: Path) -> dict[str, Path]:
    return {
        name: build(Path(out_dir) / name / "model.onnx").parent for name, build in BUILDERS.items()
    }


if __name__ == "__main__":
    for name, path in build_all(
        Path(sys.argv[1] if len(sys.argv) > 1 else "bench/.models")
    ).items():
        print(name, path)
