"""The storage-init engine step says why it built no plan: the image lacks TensorRT (the shipped
storage-init image always does), or there is no usable GPU, naming which (no GPU here: the driver
and the packages are replaced by stand-ins for the second case, as each test says)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kbundle.storage_init import engine_step


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "kbundle.yaml").write_text("build_engine: tensorrt\n")
    return tmp_path


def _skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "engine step skipped" in r.getMessage()]


def test_image_without_tensorrt_says_so_not_no_gpu(
    model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = engine_step.importlib.util.find_spec
    monkeypatch.setattr(  # as in the storage-init image: kbundle without its GPU dependencies
        engine_step.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorrt", "cuda") else real(name, *a),
    )
    with caplog.at_level(logging.INFO, "kbundle.storage_init"):
        assert engine_step.maybe_build(model) is None
    (line,) = _skipped(caplog)
    assert "no engine builder in this image: tensorrt and cuda not installed" in line
    assert "GPU" not in line.split(";")[0]


def test_missing_driver_is_named_as_the_reason(
    model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stand-ins: the packages count as installed, and loading libcuda fails as on a CPU node."""
    monkeypatch.setattr(engine_step, "tensorrt_missing_reason", lambda: None)

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(engine_step.ctypes, "CDLL", no_driver)
    with caplog.at_level(logging.INFO, "kbundle.storage_init"):
        assert engine_step.maybe_build(model) is None
    (line,) = _skipped(caplog)
    assert "no NVIDIA driver in this container (libcuda.so.1: cannot open" in line
    assert "nvidia.com/gpu" in line


def test_driver_without_devices_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    class Driver:
        def cuInit(self, flags):  # noqa: N802
            return 0

        def cuDeviceGetCount(self, ref):  # noqa: N802
            return 100  # CUDA_ERROR_NO_DEVICE

    monkeypatch.setattr(engine_step.ctypes, "CDLL", lambda name: Driver())
    assert engine_step.gpu_missing_reason() == (
        "the NVIDIA driver sees no CUDA device (CUresult 100, 0 devices)"
    )
    assert engine_step.gpu_present() is False
