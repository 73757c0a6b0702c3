"""Model revisions for canary tests, built from the digits sample: a slow one (a heavy MatMul
chain whose result is multiplied by zero into the input) and one that fails a share of requests
with a real server-side engine error (an allocation ORT cannot make, for rows whose pixel is set)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FAIL_PIXEL = 20  # digits pixel that is non-zero in about half the images


def _rewire(model: onnx.ModelProto, nodes: list, inits: list, new_input: str) -> None:
    """Insert `nodes` computing `new_input` from `input`; the old graph reads `new_input`."""
    for node in model.graph.node:
        node.input[:] = [new_input if i == "input" else i for i in node.input]
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([*nodes, *old])
    model.graph.initializer.extend(inits)


def slow_model(model: onnx.ModelProto, layers: int = 80, width: int = 1536) -> None:
    # ~8 ms a request here against the stable's ~1 ms: at 40 layers (~4 ms) a loaded machine's
    # p99 of the stable revision came within the analyzer's confidence band once (HOLD, not
    # rollback), so the canary is made clearly slower rather than the analyzer looser.
    rng = np.random.default_rng(0)
    w_in = numpy_helper.from_array(rng.standard_normal((64, width)).astype(np.float32), "w_in")
    w = numpy_helper.from_array(
        (rng.standard_normal((width, width)) / width).astype(np.float32), "w_sq"
    )
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    nodes, prev = [helper.make_node("MatMul", ["input", "w_in"], ["h0"])], "h0"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, "w_sq"], [f"h{i + 1}"]))
        prev = f"h{i + 1}"
    nodes += [
        helper.make_node("ReduceSum", [prev], ["heavy"], keepdims=1),
        helper.make_node("Mul", ["heavy", "zero"], ["nothing"]),
        helper.make_node("Add", ["input", "nothing"], ["input_slow"]),
    ]
    _rewire(model, nodes, [w_in, w, zero], "input_slow")


def failing_model(model: onnx.ModelProto) -> None:
    """Requests with a row whose pixel FAIL_PIXEL is above 10 ask the engine for a 4 TiB buffer:
    ORT's allocator fails (status FAIL), a server-side fault (500), not the client's."""
    inits = [
        numpy_helper.from_array(np.array([FAIL_PIXEL], np.int64), "pix"),
        numpy_helper.from_array(np.array([10.0], np.float32), "thr"),
        numpy_helper.from_array(np.array([1 << 40], np.int64), "huge"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_s"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Gather", ["input", "pix"], ["px"], axis=1),
        helper.make_node("ReduceMax", ["px"], ["pxm"], keepdims=0),
        helper.make_node("Greater", ["pxm", "thr"], ["set"]),
        helper.make_node("Cast", ["set"], ["set_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["set_i", "huge"], ["n0"]),
        helper.make_node("Add", ["n0", "one_i"], ["n"]),
        helper.make_node("Expand", ["zero_s", "n"], ["buffer"]),
        helper.make_node("ReduceSum", ["buffer"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["input", "nothing"], ["input_checked"]),
    ]
    _rewire(model, nodes, inits, "input_checked")


def build(src: Path, dest: Path, kind: str) -> Path:
    """A copy of the model folder `src` at `dest` with the model rebuilt as `kind`."""
    shutil.copytree(src, dest)
    model = onnx.load(dest / "model.onnx")
    {"slow": slow_model, "failing": failing_model}[kind](model)
    onnx.checker.check_model(model)
    onnx.save(model, dest / "model.onnx")
    config = dest / "kbundle.yaml"
    config.write_text(
        config.read_text().replace("model_version: digits-v1", f"model_version: {kind}")
    )
    sums = [
        f"{hashlib.sha256((dest / n).read_bytes()).hexdigest()}  {n}"
        for n in sorted(p.name for p in dest.iterdir() if p.name != "SHA256SUMS")
    ]
    (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return dest
