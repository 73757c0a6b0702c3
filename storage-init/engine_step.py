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


def gpu_present() -> bool:
    """A CUDA device the driver can see (no CUDA Python packages needed)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return (
        cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    )


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
    if not gpu_present():
        log.info("engine step skipped: no GPU on this node; the predictor serves model.onnx")
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
    log.info("engine step: built %s", built)
    return built
