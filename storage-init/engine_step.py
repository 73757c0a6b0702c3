"""Optional engine build after the fetch, so the predictor starts warm.

Asked for by the model itself: `build_engine: tensorrt` in its `kbundle.yaml`. The builder is the
GPU-engines module (`kbundle.predictors.engine_builder.build_engine`); where it is not installed
or there is no GPU, the step is skipped with one log line and the ONNX model is served as is.
A build failure is logged and does not fail the init: the predictor can still serve the ONNX
model (and build at start-up), which beats a pod that never starts.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
from pathlib import Path

import yaml

log = logging.getLogger("kbundle.storage_init")
CONFIG_KEY = "build_engine"
MODEL_CONFIG_FILE = "kbundle.yaml"


def _model_config(model_dir: Path) -> dict:
    """The model's kbundle.yaml ({} when absent or unreadable: the engine step is optional)."""
    path = model_dir / MODEL_CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("engine step skipped: cannot read %s (%s)", path.name, exc)
        return {}
    return data if isinstance(data, dict) else {}


def gpu_missing_reason() -> str | None:
    """Why no CUDA device is usable here, in words (None: one is); no CUDA Python packages needed."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"no NVIDIA driver in this container ({exc}); does the pod request nvidia.com/gpu?"
    code = cuda.cuInit(0)
    if code != 0:
        return f"the NVIDIA driver is present but cuInit failed (CUresult {code})"
    count = ctypes.c_int(0)
    code = cuda.cuDeviceGetCount(ctypes.byref(count))
    if code != 0 or count.value == 0:
        return f"the NVIDIA driver sees no CUDA device (CUresult {code}, {count.value} devices)"
    return None


def gpu_present() -> bool:
    """A CUDA device the driver can see."""
    return gpu_missing_reason() is None


def tensorrt_missing_reason() -> str | None:
    """The builder needs the tensorrt and cuda-python packages; the storage-init image ships
    neither (it installs kbundle --no-deps), so say that rather than blame the GPU."""
    missing = [m for m in ("tensorrt", "cuda") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"no engine builder in this image: {' and '.join(missing)} not installed (the "
            "storage-init image carries no TensorRT; the GPU predictor image does)"
        )
    return None


def maybe_build(model_dir: Path) -> Path | None:
    """Build the engine the model config asks for; None when not asked, skipped or failed."""
    config = _model_config(model_dir)
    kind = config.get(CONFIG_KEY)
    if not kind:
        return None
    if not (model_dir / "model.onnx").is_file():
        log.info("engine step skipped: %s=%s needs model.onnx in the model", CONFIG_KEY, kind)
        return None
    try:
        builder = importlib.import_module("kbundle.predictors.engine_builder")
    except ImportError as exc:
        log.info("engine step skipped: no engine builder in this image (%s)", exc)
        return None
    reason = tensorrt_missing_reason() or gpu_missing_reason()
    if reason:
        log.info("engine step skipped: %s; the predictor serves model.onnx", reason)
        return None
    from kbundle.settings import resolve_settings  # the full image only: it pulls in grpc

    try:
        settings = resolve_settings({**config, "engine": str(kind)})
        built = builder.build_engine(model_dir, settings)
    except Exception as exc:  # noqa: BLE001 - the ONNX model still serves; say why no engine
        log.warning(
            "engine step failed (%s: %s); the predictor will serve model.onnx",
            type(exc).__name__,
            exc,
        )
        return None
    if built is None:
        log.info("engine step: no plan built (reason above); the predictor serves model.onnx")
    else:
        log.info("engine step: built %s", built)
    return built
