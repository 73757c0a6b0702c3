"""ONNX Runtime execution provider choice: TensorRT, CUDA, CPU in that order, filtered by what exists."""

from __future__ import annotations

import pytest

from kbundle.errors import EngineLoadError
from kbundle.predictors.onnx_engine import choose_providers

ALL_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_preference_order_on_a_gpu_build():
    assert choose_providers((), ALL_GPU, "auto") == ALL_GPU


def test_cpu_only_build_falls_back_to_cpu():
    assert choose_providers((), ["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]


def test_device_cpu_drops_gpu_providers():
    assert choose_providers((), ALL_GPU, "cpu") == ["CPUExecutionProvider"]


def test_model_config_order_overrides_and_short_names_work():
    assert choose_providers(("cuda", "tensorrt"), ALL_GPU, "auto") == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_device_cuda_without_gpu_provider_is_a_clear_load_error():
    with pytest.raises(EngineLoadError, match="install onnxruntime-gpu"):
        choose_providers((), ["CPUExecutionProvider"], "cuda")


def test_unknown_provider_is_refused():
    with pytest.raises(EngineLoadError, match="unknown ONNX Runtime execution provider"):
        choose_providers(("quantum",), ALL_GPU, "auto")
