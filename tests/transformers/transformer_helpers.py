"""Shared pieces of the transformer tests: real processes, tiny real models, PNG rendering."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import procs
from procs import ServerProcess, start_module

HERE = Path(__file__).parent
HOPS = ("grpc-v2", "v2")  # the transformer's predictor protocols
HOP_TIMEOUT_S = (
    2  # the hop tests' predictor timeout; the recording server's "slow" answer takes 4 s
)


def start_predictor(tmp: Path, name: str, model_dir: Path, label: str) -> ServerProcess:
    return procs.start_predictor(name, model_dir, tmp / f"{label}.log")


def start_transformer(
    tmp: Path,
    name: str,
    model_dir: Path,
    predictor: str,
    protocol: str,
    label: str,
    extra: list[str] = (),
) -> ServerProcess:
    return procs.start_transformer(
        name, model_dir, predictor, protocol, tmp / f"{label}.log", *extra
    )


def start_recording_predictor(tmp: Path, name: str, record: Path) -> ServerProcess:
    """A real V2 server (our serving layer) that records the headers each request carried."""
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return start_module(
        "recording_v2_server",
        ["--model_name", name, "--record", str(record)],
        tmp / "recording.log",
        f"/v2/models/{name}/ready",
        env=env,
    )


def recorded(record: Path, request_id: str) -> dict:
    """The recording predictor's entry for the request with this x-request-id: its "headers"
    and "budget_s" (seconds left before its deadline as the predictor read them, or None)."""
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        if entry["headers"].get("x-request-id") == request_id:
            return entry
    raise AssertionError(f"the predictor never saw x-request-id {request_id}")


def png(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a 0..16 digits image (ink bright, as the data set is)."""
    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def bytes_array(items: list[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def write_identity_model(path: Path, width: int) -> None:
    """ONNX model: FP32 [N, width] 'features' -> 'echo' (what the engine received, unchanged)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["echo"])],
        "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("echo", TensorProto.FLOAT, [None, width])],
    )
    _save(graph, path)


def write_text_model(path: Path, table: np.ndarray) -> None:
    """ONNX model: input_ids, attention_mask [N, L] -> masked mean of the embedding rows [N, D]."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean_pooled_embedding",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [None, None]),
        ],
        [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, [None, table.shape[1]]
            )
        ],
        initializer=[
            numpy_helper.from_array(table.astype(np.float32), "table"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        ],
    )
    _save(graph, path)


def _save(graph, path: Path) -> None:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
