"""ONNX Runtime on GPU: provider choice and options, device: cuda on a CPU-only onnxruntime
(clear one-line failure, non-zero exit), engine fallback under device: auto, and the GPU
providers with IO binding through the real server (marked gpu)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kbundle.errors import EngineLoadError
from kbundle.predictors.engine import load_engine
from kbundle.predictors.onnx_engine import (
    GPU_PROVIDERS,
    OnnxEngine,
    choose_providers,
    provider_options,
)
from kbundle.settings import ModelSettings

CPU_ONLY = ["CPUExecutionProvider"]
GPU_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_providers_prefer_tensorrt_then_cuda_and_keep_cpu_last() -> None:
    assert choose_providers([], GPU_ORT, "auto") == GPU_ORT
    assert choose_providers(["cuda"], GPU_ORT, "cuda") == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers([], GPU_ORT, "cpu") == CPU_ONLY
    assert choose_providers([], CPU_ONLY, "auto") == CPU_ONLY  # auto quietly means CPU here


def test_device_cuda_on_cpu_only_onnxruntime_names_the_fix() -> None:
    with pytest.raises(EngineLoadError, match="install onnxruntime-gpu in place of onnxruntime"):
        choose_providers([], CPU_ONLY, "cuda")


def test_tensorrt_provider_options_follow_precision_and_cache_dir(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    fp16 = provider_options("TensorrtExecutionProvider", ModelSettings(fp16=True), model)
    assert fp16["trt_fp16_enable"] is True and fp16["trt_int8_enable"] is False
    # never the model dir: KServe mounts it read-only
    assert fp16["trt_engine_cache_enable"] is True and fp16["trt_engine_cache_path"] == str(
        Path(tempfile.gettempdir()) / "kbundle-trt-cache"
    )
    assert not fp16["trt_engine_cache_path"].startswith(str(tmp_path))
    int8 = provider_options(
        "TensorrtExecutionProvider",
        ModelSettings(precision="int8", engine_cache_dir="/cache"),
        model,
    )
    assert int8["trt_int8_enable"] is True and int8["trt_engine_cache_path"] == "/cache"
    assert provider_options("CUDAExecutionProvider", ModelSettings(), model)["device_id"] == 0
    assert provider_options("CPUExecutionProvider", ModelSettings(), model) == {}


def _gpu_providers() -> list[str]:
    return [p for p in ort.get_available_providers() if p in GPU_PROVIDERS]


def test_predictor_with_device_cuda_exits_nonzero_with_one_line(digits_v1: Path) -> None:
    if _gpu_providers():
        pytest.skip(f"this onnxruntime has GPU providers {_gpu_providers()}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbundle.predictors",
            "--model_name",
            "digits",
            "--model_dir",
            str(digits_v1),
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: model 'digits' failed to load: device: cuda asked for, but this onnxruntime offers only "
        f"{ort.get_available_providers()} (install onnxruntime-gpu in place of onnxruntime, on a machine with a CUDA GPU)"
    ]


def test_auto_falls_back_from_an_unusable_plan_to_onnx(
    tmp_path: Path, digits_v1: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(digits_v1 / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "model.plan").write_bytes(b"not a plan for this machine")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed: the plan would be tried for real")
    except ImportError:
        pass
    engine = load_engine(tmp_path, ModelSettings())
    assert isinstance(engine, OnnxEngine)
    assert (
        "tensorrt engine not usable here" in caplog.text and "falling back to onnx" in caplog.text
    )
    with pytest.raises(EngineLoadError, match="tensorrt"):  # device: cuda never falls back
        load_engine(tmp_path, ModelSettings(device="cuda"))
    with pytest.raises(EngineLoadError):  # nor does a named engine
        load_engine(tmp_path, ModelSettings(engine="tensorrt"))


def test_cpu_path_is_unchanged_without_io_binding(digits_v1: Path) -> None:
    engine = OnnxEngine.load(digits_v1 / "model.onnx", ModelSettings(device="cpu"))
    assert engine.on_gpu is False and engine.device == "cpu (CPUExecutionProvider)"
    out = engine.run({"input": np.zeros((3, 64), np.float32)}, ["probabilities"])
    assert out[0].shape == (3, 10)


@pytest.mark.gpu
@pytest.mark.parametrize("providers", ["cuda", "tensorrt,cuda"])
def test_gpu_providers_with_io_binding_served(
    providers: str, digits_v1: Path, tmp_path: Path
) -> None:
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt,cuda": "TensorrtExecutionProvider"}[
        providers
    ]
    if wanted not in ort.get_available_providers():
        pytest.skip(
            f"needs onnxruntime-gpu with {wanted} on a CUDA GPU; available: {ort.get_available_providers()}"
        )
    import tritonclient.http as httpclient
    from procs import start_module

    engine = OnnxEngine.load(
        digits_v1 / "model.onnx",
        ModelSettings(
            device="cuda",
            execution_providers=tuple(providers.split(",")),
            engine_cache_dir=str(tmp_path / "trt-inproc"),
        ),
    )
    # ORT falls back quietly when the TensorRT EP cannot load (libnvinfer missing): the session
    # that ran must report the wanted provider first, not just have had it on offer.
    assert engine.session.get_providers()[0] == wanted, engine.session.get_providers()
    assert engine.on_gpu
    x = np.random.default_rng(0).uniform(0, 16, (8, 64)).astype(np.float32)
    bound = engine.run({"input": x}, ["probabilities"])[0]  # IO binding path
    plain = OnnxEngine.load(digits_v1 / "model.onnx", ModelSettings(device="cpu")).run(
        {"input": x}, ["probabilities"]
    )[0]
    np.testing.assert_allclose(bound, plain, atol=1e-3)
    server = start_module(
        "kbundle.predictors",
        [
            "--model_name",
            "digits",
            "--model_dir",
            str(digits_v1),
            "--device",
            "cuda",
            "--execution_providers",
            providers,
            "--engine_cache_dir",
            str(tmp_path / "trt"),
        ],
        tmp_path / "server.log",
        "/v2/models/digits/ready",
        timeout=300,
    )
    try:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        probs = (
            httpclient.InferenceServerClient(server.http_url)
            .infer("digits", [inp])
            .as_numpy("probabilities")
        )
        np.testing.assert_allclose(probs, plain, atol=1e-3)
        # the provider the served session really runs on, not the "offered" list in the same line
        assert f"onnxruntime session runs on ['{wanted}'" in server.log(), server.log()[-3000:]
        if wanted == "TensorrtExecutionProvider":
            assert list((tmp_path / "trt").glob("*.engine")), "the TensorRT EP built no engine"
    finally:
        server.stop()


def test_tensorrt_provider_gets_the_same_profile_as_a_native_plan(digits_v1: Path) -> None:
    from kbundle.predictors.onnx_engine import input_shapes_of

    shapes = input_shapes_of(digits_v1 / "model.onnx")
    assert shapes == {"input": (-1, 64)}
    options = provider_options(
        "TensorrtExecutionProvider",
        ModelSettings(profile_batch=(1, 4, 16)),
        digits_v1 / "model.onnx",
        shapes,
    )
    assert options["trt_profile_min_shapes"] == "input:1x64"
    assert options["trt_profile_opt_shapes"] == "input:4x64"
    assert options["trt_profile_max_shapes"] == "input:16x64"
    # a sequence dim with no profile_seq: no explicit profile, the EP sizes engines itself
    seq = provider_options(
        "TensorrtExecutionProvider", ModelSettings(), digits_v1 / "model.onnx", {"ids": (-1, -1)}
    )
    assert "trt_profile_min_shapes" not in seq


def test_predictor_that_cannot_load_its_gpu_engine_is_not_ready(digits_v1: Path) -> None:
    from kbundle.predictors.predictor import EnginePredictor

    if _gpu_providers():
        pytest.skip(f"this onnxruntime has GPU providers {_gpu_providers()}")
    predictor = EnginePredictor("digits", digits_v1, ModelSettings(device="cuda"))
    assert predictor.load() is False
    assert predictor.ready is False
    assert (
        predictor.load_error.startswith("device: cuda asked for")
        and "\n" not in predictor.load_error
    )


_REAL_SESSION = ort.InferenceSession


class _SessionOnTensorRT:
    """A real CPU session that reports the providers a GPU onnxruntime would have made active:
    stands in where no TensorRT EP can load (this machine), to drive OnnxEngine's own code."""

    active = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    seen: list[dict] = []

    def __init__(self, path, sess_options=None, providers=None, provider_options=None):
        if provider_options is not None:  # input_shapes_of's own probe session passes none
            type(self).seen.append(dict(zip(providers, provider_options, strict=True)))
        self._real = _REAL_SESSION(path, providers=["CPUExecutionProvider"])

    def get_providers(self):
        return list(self.active)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture()
def trt_ep_session(monkeypatch: pytest.MonkeyPatch):
    from kbundle.predictors import onnx_engine

    _SessionOnTensorRT.seen = []
    monkeypatch.setattr(onnx_engine.ort, "get_available_providers", lambda: GPU_ORT)
    monkeypatch.setattr(onnx_engine.ort, "InferenceSession", _SessionOnTensorRT)
    return _SessionOnTensorRT


def test_tensorrt_ep_profile_becomes_the_engine_range_and_batch_cap(
    trt_ep_session, digits_v1: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kbundle.errors import InvalidRequest

    settings = ModelSettings(profile_batch=(1, 4, 16), engine_cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.INFO, "kbundle.engine.onnx"):
        engine = OnnxEngine.load(digits_v1 / "model.onnx", settings)
    options = trt_ep_session.seen[-1]["TensorrtExecutionProvider"]
    assert options["trt_profile_max_shapes"] == "input:16x64"
    assert options["trt_engine_cache_path"] == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert engine.shape_ranges == {"input": ((1, 64), (16, 64))}
    assert engine.max_batch_rows() == 16  # the predictor caps its batcher here
    with pytest.raises(InvalidRequest, match="dim 0 is 17, outside the onnx engine's range 1..16"):
        engine.check_shapes("digits", {"input": np.zeros((17, 64), np.float32)})
    assert "onnxruntime session runs on ['TensorrtExecutionProvider'" in caplog.text


def test_tensorrt_ep_that_did_not_load_is_a_warning_and_no_profile_range(
    trt_ep_session, monkeypatch: pytest.MonkeyPatch, digits_v1: Path, tmp_path: Path, caplog
) -> None:
    monkeypatch.setattr(trt_ep_session, "active", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    engine = OnnxEngine.load(
        digits_v1 / "model.onnx", ModelSettings(engine_cache_dir=str(tmp_path / "c"))
    )
    assert engine.shape_ranges == {} and engine.on_gpu
    assert "TensorrtExecutionProvider was asked for but did not load" in caplog.text


def test_unwritable_tensorrt_ep_cache_is_a_load_error_naming_the_setting(
    trt_ep_session, digits_v1: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a dir")
    settings = ModelSettings(engine_cache_dir=str(tmp_path / "file" / "cache"))
    with pytest.raises(
        EngineLoadError, match="is not writable .*point engine_cache_dir at a writable"
    ):
        OnnxEngine.load(digits_v1 / "model.onnx", settings)
