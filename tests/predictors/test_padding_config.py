"""Padding configs that cannot be right are refused when the model loads, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from procs import error_lines, predictor_cmd, run_to_exit
from text_models import encoder_onnx, model_dir

from kbundle.errors import EngineLoadError
from kbundle.predictors.onnx_engine import OnnxEngine
from kbundle.predictors.padding import Padding
from kbundle.settings import ModelSettings

GOOD = {
    "dim": "s",
    "buckets": [16, 32, 64],
    "pad_values": {"input_ids": 0, "attention_mask": 0},
    "mask": "attention_mask",
}


@pytest.fixture(scope="module")
def engine() -> OnnxEngine:
    return OnnxEngine.load(encoder_onnx(), ModelSettings(device="cpu"))


def test_a_good_config_pads_both_inputs_and_cuts_the_per_position_output(engine) -> None:
    plan = Padding.build("enc", GOOD, engine)
    assert dict(plan.inputs) == {"input_ids": 1, "attention_mask": 1}
    assert dict(plan.outputs) == {"hidden": 1}  # sentence_vec and logits have no `s`
    assert (plan.bucket(1), plan.bucket(17), plan.bucket(64), plan.bucket(65)) == (16, 32, 64, None)


def test_merge_is_on_unless_turned_off(engine) -> None:
    assert Padding.build("enc", GOOD, engine).merge is True
    assert Padding.build("enc", {**GOOD, "merge": False}, engine).merge is False


def test_an_axis_number_works_where_the_engine_names_no_dims(engine) -> None:
    plan = Padding.build("enc", {**GOOD, "dim": 1}, engine)
    assert dict(plan.inputs) == {"input_ids": 1, "attention_mask": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": "t"}, "dim 't' is not a dynamic non-batch dim of any input"),
        ({"dim": "b"}, "dim 'b' is not a dynamic non-batch dim of any input"),
        ({"buckets": [32, 16]}, "'buckets' must be increasing positive integers"),
        ({"buckets": []}, "'buckets' must be increasing positive integers"),
        (
            {"pad_values": {"input_ids": 0, "attention_mask": 0, "tokens": 0}},
            "unknown input(s) ['tokens']",
        ),
        ({"pad_values": {"input_ids": 0}}, "no value for padded input(s) ['attention_mask']"),
        (
            {"pad_values": {"input_ids": 0.5, "attention_mask": 0}},
            "pad value 0.5 for 'input_ids' is not a int64 value",
        ),
        ({"mask": "token_type_ids"}, "mask 'token_type_ids' is not one of the padded inputs"),
        (
            {"pad_values": {"input_ids": 0, "attention_mask": 1}},
            "the mask 'attention_mask' must pad with 0",
        ),
        ({"bucket": [8]}, "unknown key(s) ['bucket']"),
        ({"merge": "yes"}, "'merge' must be true or false, got 'yes'"),
    ],
)
def test_configs_that_cannot_be_right_are_refused(engine, change, message) -> None:
    with pytest.raises(EngineLoadError) as info:
        Padding.build("enc", {**GOOD, **change}, engine)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bucket_over_the_engines_max_is_refused(engine, monkeypatch) -> None:
    # TensorRT cannot run here: the ORT engine is given the ranges a TensorRT profile reports.
    monkeypatch.setattr(engine, "shape_ranges", {"input_ids": ((1, 1), (32, 48))}, raising=False)
    with pytest.raises(EngineLoadError, match="bucket 64 is over the onnx engine's max 48"):
        Padding.build("enc", GOOD, engine)


def test_the_predictor_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 8\npadding:\n  dim: s\n  buckets: [16]\n  pad_values: {input_ids: 0}\n"
    )
    directory = model_dir(tmp_path / "enc", config)
    proc = run_to_exit(predictor_cmd("enc", directory))
    assert proc.returncode == 1
    errors = error_lines(proc.stderr)
    assert errors == [
        "error: model 'enc' failed to load: model 'enc' kbundle.yaml padding: pad_values has no "
        "value for padded input(s) ['attention_mask']"
    ]


def test_padding_without_the_batcher_is_refused(tmp_path: Path) -> None:
    from kbundle.predictors.predictor import EnginePredictor

    directory = model_dir(tmp_path / "enc")
    predictor = EnginePredictor("enc", directory, ModelSettings(max_batch_size=0, padding=GOOD))
    assert not predictor.load() and "padding needs the batcher" in predictor.load_error


def test_a_tensorrt_signature_takes_dim_names_from_the_onnx_beside_the_plan() -> None:
    # What read_io_tensors reports for a plan built from the encoder (TensorRT cannot run here).
    from kbundle.predictors.dim_names import onnx_dim_names, with_dim_names
    from kbundle.predictors.tensorrt_engine import IoTensor, signature_of

    profile = (((1, 1), (8, 64), (32, 128)),)
    tensors = [
        IoTensor("input_ids", True, "INT64", (-1, -1), profile),
        IoTensor("attention_mask", True, "INT64", (-1, -1), profile),
        IoTensor("hidden", False, "FLOAT", (-1, -1, 64)),
        IoTensor("sentence_vec", False, "FLOAT", (-1, 64)),
        IoTensor("logits", False, "FLOAT", (-1, 3)),
    ]
    signature = with_dim_names(signature_of(tensors), onnx_dim_names(encoder_onnx()))
    assert set(signature.shared_dims()) == {"b", "s"}
    assert signature.output("hidden").dim_names == ("b", "s", None)
    assert with_dim_names(signature_of(tensors), {}).shared_dims() == {}
