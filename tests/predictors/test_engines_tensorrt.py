"""TensorRT engine: signature and profile ranges from I/O tensors (CPU), load refusals (CPU),
and the real build + serve path on a GPU (marked gpu, skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kbundle.errors import EngineLoadError, InvalidRequest
from kbundle.predictors.cuda_device import GpuInfo
from kbundle.predictors.engine import Engine
from kbundle.predictors.tensorrt_engine import (
    IoTensor,
    TensorRTEngine,
    check_plan_target,
    shape_ranges_of,
    signature_of,
)
from kbundle.settings import ModelSettings

# What read_io_tensors returns for the digits model built with profile_batch 1,8,32.
DIGITS_IO = [
    IoTensor("input", True, "FLOAT", (-1, 64), (((1, 64), (8, 64), (32, 64)),)),
    IoTensor("label", False, "INT64", (-1,)),
    IoTensor("probabilities", False, "FLOAT", (-1, 10)),
]


def test_signature_from_io_tensors_keeps_dynamic_dims_as_minus_one() -> None:
    signature = signature_of(DIGITS_IO)
    assert [s.to_metadata() for s in signature.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    ]
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [
        ("label", "INT64", (-1,)),
        ("probabilities", "FP32", (-1, 10)),
    ]
    assert signature.batchable


def test_profile_ranges_are_the_intersection_over_profiles() -> None:
    two_profiles = IoTensor(
        "ids", True, "INT32", (-1, -1), (((1, 8), (4, 64), (16, 128)), ((2, 1), (8, 64), (32, 256)))
    )
    static = IoTensor("mask", True, "HALF", (1, 4))
    assert shape_ranges_of([two_profiles, static]) == {"ids": ((2, 8), (16, 128))}


def test_unsupported_io_dtype_is_refused_by_name() -> None:
    with pytest.raises(EngineLoadError, match="output 'logits' is BF16"):
        signature_of([IoTensor("logits", False, "BF16", (-1, 10))])


class _Ranged(Engine):
    """Only the base-class range check is exercised: the TensorRT engine reuses it unchanged."""

    kind = "tensorrt"

    def __init__(self) -> None:
        self.signature = signature_of(DIGITS_IO)
        self.shape_ranges = shape_ranges_of(DIGITS_IO)

    def run(self, inputs, output_names):  # pragma: no cover - never reached
        raise AssertionError


def test_request_outside_the_profile_is_a_clear_400() -> None:
    engine = _Ranged()
    engine.check_shapes("digits", {"input": np.zeros((32, 64), np.float32)})  # the max is allowed
    with pytest.raises(InvalidRequest) as info:
        engine.check_shapes("digits", {"input": np.zeros((33, 64), np.float32)})
    assert info.value.http_status == 400
    assert str(info.value) == (
        "model 'digits' input 'input': dim 0 is 33, outside the tensorrt engine's range 1..32 "
        "(shape [33, 64], allowed [1, 64]..[32, 64])"
    )


def test_plan_built_for_another_gpu_is_refused_in_words(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    (tmp_path / "model.plan.json").write_text(
        json.dumps({"compute_capability": "8.6", "tensorrt_version": "10.3.0"})
    )
    with pytest.raises(
        EngineLoadError, match=r"built for sm 8.6 / TensorRT 10.3.0, this is NVIDIA H100 sm 9.0"
    ):
        check_plan_target(plan, GpuInfo(0, "NVIDIA H100", "9.0"), "10.3.0")
    check_plan_target(plan, GpuInfo(0, "NVIDIA A10", "8.6"), "10.3.0")  # same target: no complaint


def test_device_cpu_with_a_plan_fails_to_load_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "model.plan").write_bytes(b"plan")
    with pytest.raises(EngineLoadError, match="runs on CUDA only"):
        TensorRTEngine.load(tmp_path / "model.plan", ModelSettings(device="cpu"))


def _gpu_with_tensorrt() -> str | None:
    """None when a GPU and TensorRT are usable, else why not (the skip reason)."""
    try:
        import tensorrt  # noqa: F401

        from kbundle.predictors.cuda_device import gpu_info

        gpu_info(0)
    except (ImportError, EngineLoadError) as exc:
        return f"needs a CUDA GPU with tensorrt and cuda-python: {exc}"
    return None


@pytest.mark.gpu
def test_build_and_serve_tensorrt_plan_on_gpu(tmp_path: Path) -> None:
    """The Torch-exported digits ONNX (Div, Gemm, Relu, Softmax, ArgMax: ops TensorRT's parser
    takes; the scikit-learn sample's ai.onnx.ml ops it does not), built fp16, served with two
    contexts, checked against ONNX Runtime CPU on the same file."""
    reason = _gpu_with_tensorrt()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("torch", reason="the Torch-exported sample needs torch to export it")
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    import tritonclient.http as httpclient
    from procs import start_module

    from kbundle.samples_torch import build_torch_digits

    model_dir = tmp_path / "digits"
    model_dir.mkdir()
    shutil.copy(build_torch_digits() / "model.onnx", model_dir / "model.onnx")
    build = subprocess.run(
        [sys.executable, "-m", "kbundle.cli", "build", str(model_dir), "--fp16", "true"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    rebuilt = subprocess.run(
        [sys.executable, "-m", "kbundle.cli", "build", str(model_dir), "--fp16", "true"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "reusing cached TensorRT engine" in rebuilt.stderr
    (model_dir / "model.onnx").unlink()  # serve the plan, nothing to fall back to
    server = start_module(
        "kbundle.predictors",
        ["--model_name", "digits", "--model_dir", str(model_dir), "--device", "cuda"]
        + ["--instances", "2", "--max_batch_size", "64"],
        tmp_path / "server.log",
        "/v2/models/digits/ready",
        timeout=300,
    )
    reference = ort.InferenceSession(
        str(build_torch_digits() / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)

    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("digits", [inp])
        return result.as_numpy("label"), result.as_numpy("probabilities")

    try:
        batches = [rng.uniform(0, 16, (int(n), 64)).astype(np.float32) for n in (1, 8, 13, 32)] * 8
        with ThreadPoolExecutor(8) as pool:  # both contexts busy, through the batcher
            results = list(pool.map(infer, batches))
        for x, (label, probs) in zip(batches, results, strict=True):
            want_label, want_probs = reference.run(["label", "probabilities"], {"input": x})
            assert label.dtype == np.int64 and probs.shape == (len(x), 10)
            np.testing.assert_allclose(probs, want_probs, atol=2e-2)  # fp16 plan vs fp32 CPU
            assert (label == want_label).mean() >= 0.95
        log = server.log()
        assert "tensorrt engine" in log and "cuda:0" in log
        assert "max_batch_size 64 capped to 32" in log  # the profile max from profile_batch
        assert "retrying each alone" not in log and "engine failure" not in log
        big = httpclient.InferInput("input", [33, 64], "FP32")
        big.set_data_from_numpy(np.zeros((33, 64), np.float32))
        client = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(Exception, match="outside the tensorrt engine's range 1..32"):
            client.infer("digits", [big])
    finally:
        server.stop()


# -- the engine's own code on CPU, against stand-ins for TensorRT and CUDA (see fake_tensorrt.py) --
@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    from fake_tensorrt import FakeCudart, FakeEngine, fake_trt_module

    from kbundle.predictors import cuda_device

    cudart = FakeCudart()
    engine = FakeEngine(
        np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), max_batch=32
    )
    monkeypatch.setattr(cuda_device, "_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_module(engine))
    return cudart, engine


def test_engine_runs_through_fixed_buffers_one_context_per_instance(
    fake_gpu, tmp_path: Path
) -> None:
    """Stand-in TensorRT/CUDA: checks kbundle's buffers, shapes and copies, not TensorRT."""
    cudart, fake = fake_gpu
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    engine = TensorRTEngine.load(plan, ModelSettings(device="cuda", instances=3))
    assert fake.contexts == 3 and cudart.streams_open == 3
    assert len(cudart.allocations) == 9  # 3 tensors x 3 contexts, sized once at load
    assert len(cudart.host_allocations) == 9  # a pinned host buffer beside each device buffer
    assert engine.device == "cuda:0 (Fake GPU, sm 9.0, TensorRT 10.99.0-fake)"
    assert engine.shape_ranges == {"input": ((1, 64), (32, 64))}
    x = np.random.default_rng(1).uniform(0, 16, (5, 64)).astype(np.float32)
    logits = x @ fake.weights
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    before = cudart.copies
    probs, label = engine.run({"input": x}, ["probabilities", "label"])
    assert cudart.copies - before == 3  # one upload, one download per requested output
    np.testing.assert_allclose(probs, want, rtol=1e-5)
    assert (label == want.argmax(axis=1)).all()
    (only,) = engine.run({"input": x[:2].astype(np.float64)}, ["label"])  # cast to the plan's dtype
    assert only.shape == (2,)
    again = engine.run({"input": x}, ["probabilities"])[0]
    np.testing.assert_array_equal(
        again, probs
    )  # outputs are copies, not views of the slot's buffer
    engine.close()
    assert cudart.allocations == {} and cudart.host_allocations == {}
    assert cudart.streams_open == 0 and fake.live_contexts == 0


def _released(cudart, fake) -> dict[str, int]:
    return {
        "device buffers": len(cudart.allocations),
        "pinned buffers": len(cudart.host_allocations),
        "streams": cudart.streams_open,
        "contexts": fake.live_contexts,
    }


NOTHING_HELD = {"device buffers": 0, "pinned buffers": 0, "streams": 0, "contexts": 0}


def test_load_failing_at_the_third_context_releases_the_first_two(fake_gpu, tmp_path: Path) -> None:
    cudart, fake = fake_gpu
    fake.fail_context_after = 2
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    with pytest.raises(EngineLoadError, match="could not create an execution context"):
        TensorRTEngine.load(plan, ModelSettings(device="cuda", instances=3))
    assert fake.contexts == 2 and _released(cudart, fake) == NOTHING_HELD


def test_cuda_malloc_failing_half_way_through_a_slot_releases_everything(
    fake_gpu, tmp_path: Path
) -> None:
    cudart, fake = fake_gpu
    cudart.fail_malloc_after = 4  # slot 1 complete (3 buffers), slot 2 fails on its second
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    with pytest.raises(EngineLoadError, match=r"CUDA setup .* failed: cudaMalloc\(\d+\) failed"):
        TensorRTEngine.load(plan, ModelSettings(device="cuda", instances=2))
    assert _released(cudart, fake) == NOTHING_HELD


def test_refused_tensor_address_is_a_load_error_naming_the_tensor(fake_gpu, tmp_path: Path) -> None:
    cudart, fake = fake_gpu
    fake.refused_addresses = {"probabilities"}
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    with pytest.raises(
        EngineLoadError, match="TensorRT refused the device address for tensor 'probabilities'"
    ):
        TensorRTEngine.load(plan, ModelSettings(device="cuda"))
    assert _released(cudart, fake) == NOTHING_HELD


def test_refused_profile_max_shape_is_a_load_error(fake_gpu, tmp_path: Path) -> None:
    cudart, fake = fake_gpu
    fake.profile = [(1, 64), (8, 64), (64, 64)]  # the plan claims a max its contexts refuse
    fake.max_accepted = 32
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    with pytest.raises(
        EngineLoadError, match=r"refused input 'input' at its profile max \[64, 64\]"
    ):
        TensorRTEngine.load(plan, ModelSettings(device="cuda"))
    assert _released(cudart, fake) == NOTHING_HELD


def test_the_engine_reports_its_profile_max_as_the_batch_cap(fake_gpu, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    engine = TensorRTEngine.load(plan, ModelSettings(device="cuda"))
    assert engine.max_batch_rows() == 32
    engine.close()


def test_concurrent_calls_each_get_their_own_context(fake_gpu, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized")
    engine = TensorRTEngine.load(plan, ModelSettings(device="cuda", instances=2))
    rng = np.random.default_rng(2)
    batches = [rng.uniform(0, 16, (int(n), 64)).astype(np.float32) for n in rng.integers(1, 33, 40)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: engine.run({"input": b}, ["label"])[0], batches))
    assert [r.shape[0] for r in results] == [b.shape[0] for b in batches]
    serial = [engine.run({"input": b}, ["label"])[0] for b in batches]
    assert all((a == b).all() for a, b in zip(results, serial, strict=True))


def test_plan_that_does_not_deserialize_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, fake_gpu, tmp_path: Path
) -> None:
    from fake_tensorrt import fake_trt_module

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_module(None))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"from another GPU")
    with pytest.raises(
        EngineLoadError,
        match="cannot deserialize .* on Fake GPU \\(sm 9.0\\).*rebuild it with `kbundle build`",
    ):
        TensorRTEngine.load(plan, ModelSettings(device="cuda"))


def test_warm_up_inputs_start_at_the_profile_minimum() -> None:
    from kbundle.predictors.engine import warmup_inputs
    from kbundle.specs import Signature, TensorSpec

    signature = Signature.of(
        [TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("mask", "FP32", (-1, 4))], []
    )
    shapes = {
        k: v.shape
        for k, v in warmup_inputs(signature, ranges={"ids": ((2, 16), (32, 512))}).items()
    }
    assert shapes == {"ids": (2, 16), "mask": (2, 4)}  # batch raised for every input alike
    assert {k: v.shape for k, v in warmup_inputs(signature).items()} == {
        "ids": (1, 1),
        "mask": (1, 4),
    }


def test_predictor_caps_the_batcher_at_the_plan_profile_max(
    fake_gpu, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_batch_size 64 over a plan whose profile stops at 32: every full batch would be refused
    by set_input_shape and rerun request by request; the batcher is built with 32 instead."""
    from kbundle.predictors.predictor import EnginePredictor

    (tmp_path / "model.plan").write_bytes(b"serialized")
    settings = ModelSettings(device="cuda", max_batch_size=64, warmup=False)
    predictor = EnginePredictor("digits", tmp_path, settings)
    assert predictor.load(), predictor.load_error
    assert predictor.batcher.max_batch_size == 32
    assert "max_batch_size 64 capped to 32, the tensorrt engine's largest batch" in caplog.text
    predictor.stop()


def test_the_gpu_test_model_has_only_ops_tensorrt_parses(digits_v1: Path) -> None:
    """The plan in the gpu test is built from the Torch-exported sample: default-domain ONNX ops
    only. The scikit-learn sample carries ai.onnx.ml ops, which TensorRT's ONNX parser lacks."""
    pytest.importorskip("torch", reason="the Torch-exported sample needs torch")
    onnx = pytest.importorskip("onnx")
    from kbundle.samples_torch import build_torch_digits

    def domains(path: Path) -> set[str]:
        return {node.domain or "ai.onnx" for node in onnx.load(str(path)).graph.node}

    assert domains(build_torch_digits() / "model.onnx") == {"ai.onnx"}
    assert "ai.onnx.ml" in domains(digits_v1 / "model.onnx")  # why the sklearn sample is not used
