"""Signature dim names, the shared-dim check, one-pass duplicate checks and engine fault mapping."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kbundle.errors import EngineError, InvalidRequest
from kbundle.specs import Signature, TensorSpec
from kbundle.validation import SignatureValidator

IDS = TensorSpec("input_ids", "INT64", (-1, -1), ("b", "s"))
MASK = TensorSpec("attention_mask", "INT64", (-1, -1), ("b", "s"))
OUT = TensorSpec("logits", "FP32", (-1, 3), ("b", None))


def validator() -> SignatureValidator:
    return SignatureValidator("enc", Signature.of([IDS, MASK], [OUT]))


def test_shared_dims_list_every_place_a_name_recurs() -> None:
    shared = Signature.of([IDS, MASK], [OUT]).shared_dims()
    assert shared == {
        "b": (("input_ids", 0), ("attention_mask", 0)),
        "s": (("input_ids", 1), ("attention_mask", 1)),
    }


def test_metadata_keeps_minus_one_and_no_names() -> None:
    assert IDS.to_metadata() == {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}


def test_names_are_kept_only_on_dynamic_dims() -> None:
    spec = TensorSpec("x", "FP32", (-1, 64)).named(["b", "features"])
    assert spec.dim_names == ("b", None)
    assert TensorSpec("y", "FP32", (2, 3)).named(["a", "c"]).dim_names == ()


def test_inputs_disagreeing_on_a_named_dim_are_refused_naming_both() -> None:
    arrays = {"input_ids": np.zeros((3, 9), np.int64), "attention_mask": np.zeros((3, 7), np.int64)}
    with pytest.raises(InvalidRequest) as info:
        validator().check_batch(arrays)
    assert str(info.value) == (
        "model 'enc' inputs 'input_ids' and 'attention_mask' disagree on dim 's' (9 vs 7)"
    )


def test_one_input_using_a_name_twice_must_agree_with_itself() -> None:
    square = TensorSpec("m", "FP32", (-1, -1, -1), ("b", "n", "n"))
    check = SignatureValidator("sq", Signature.of([square], [OUT]))
    check.check_batch({"m": np.zeros((1, 4, 4), np.float32)})
    with pytest.raises(
        InvalidRequest, match=r"input 'm': dims 1 and 2 disagree on dim 'n' \(4 vs 5\)"
    ):
        check.check_batch({"m": np.zeros((1, 4, 5), np.float32)})


def test_agreeing_inputs_pass() -> None:
    arrays = {"input_ids": np.zeros((3, 9), np.int64), "attention_mask": np.zeros((3, 9), np.int64)}
    assert validator().check_batch(arrays) == 3


def test_duplicate_names_are_found_in_one_pass() -> None:
    names = ["input_ids"] * 60_000 + ["attention_mask"]
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="input 'input_ids' given more than once"):
        validator().check_complete(names)
    assert time.perf_counter() - started < 0.05
    distinct = [f"x{i}" for i in range(60_000)] + ["x59999"]
    check = SignatureValidator("wide", Signature.of([], [OUT]))
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="input 'x59999' given more than once"):
        check.check_complete(distinct)
    assert time.perf_counter() - started < 0.5  # list.count made this 3.6e9 comparisons
    with pytest.raises(InvalidRequest, match="output 'logits' given more than once"):
        validator().check_outputs(["logits", "logits"])


def test_engine_faults_of_the_client_are_400_and_the_rest_500_without_engine_text() -> None:
    from kbundle.predictors.faults import engine_fault

    inputs = {"x": np.zeros((2, 3), np.float32)}
    shape = RuntimeError(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
        "Reshape node. /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91 "
        "The input tensor cannot be reshaped to the requested shape"
    )
    client = engine_fault("m", shape, inputs, "req-1")
    assert isinstance(client, InvalidRequest)
    assert str(client) == (
        "model 'm': the engine cannot run this request's shapes or values (x [2, 3]); "
        "see the server log for request id req-1"
    )
    server = engine_fault(
        "m", RuntimeError("CUDA error at /src/kernels/gemm.cu:12: illegal address"), inputs, "req-2"
    )
    assert isinstance(server, EngineError)
    assert (
        str(server) == "model 'm': internal engine error; see the server log for request id req-2"
    )
    empty = engine_fault("m", RuntimeError("kernel failed"), {"x": np.zeros((0, 3))}, "r")
    assert isinstance(empty, InvalidRequest)
    torch_size = RuntimeError(
        "The size of tensor a (9) must match the size of tensor b (7) at non-singleton dimension 1"
    )
    assert isinstance(engine_fault("m", torch_size, inputs), InvalidRequest)
    assert isinstance(
        engine_fault("m", IndexError("index out of range in self"), inputs), InvalidRequest
    )


def test_image_errors_never_show_the_buffer_repr() -> None:
    from PIL import UnidentifiedImageError

    from kbundle.transformers.image import _reason

    exc = UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7f00aa>")
    assert _reason(exc) == "the bytes are not a PNG or JPEG file"
    assert "0x" not in _reason(
        OSError("broken data stream when reading <_io.BytesIO object at 0x7f1>")
    )
