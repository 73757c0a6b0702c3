"""The engine interface every predictor engine implements, and the loader that picks one.

An engine loads from a model directory, reports a frozen Signature taken from the engine
itself, and runs a batch of numpy arrays. It is called from worker threads, one call at a time
per instance, so `run` may block.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from kbundle.errors import EngineLoadError
from kbundle.settings import ModelSettings
from kbundle.specs import DYNAMIC, Signature, TensorSpec

logger = logging.getLogger("kbundle.engine")


class Engine(ABC):
    """One loaded model, ready to run batches."""

    kind: ClassVar[str]
    model_file: ClassVar[str]

    signature: Signature
    device: str  # where it runs, in words, for logs and status

    @abstractmethod
    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        """Run one batch; returns the outputs in `output_names` order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (device memory, sessions)."""


# kind -> (model file, "module:Class"); imported lazily so torch/TensorRT stay optional.
ENGINES: dict[str, tuple[str, str]] = {
    "onnx": ("model.onnx", "kbundle.predictors.onnx_engine:OnnxEngine"),
    "tensorrt": ("model.plan", "kbundle.predictors.tensorrt_engine:TensorRTEngine"),
    "torch": ("model.pt2", "kbundle.predictors.torch_engine:TorchEngine"),
}


def detect_kind(model_dir: Path) -> str:
    """The engine for a model dir: the first engine file present (plan before pt2 before onnx)."""
    for kind in ("tensorrt", "torch", "onnx"):
        if (model_dir / ENGINES[kind][0]).is_file():
            return kind
    wanted = ", ".join(spec[0] for spec in ENGINES.values())
    raise EngineLoadError(f"no engine file in {model_dir} (looked for {wanted})")


def engine_class(kind: str) -> type[Engine]:
    module_name, class_name = ENGINES[kind][1].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineLoadError(f"the {kind} engine cannot be imported here: {exc}") from exc
    return getattr(module, class_name)


def load_engine(model_dir: str | Path, settings: ModelSettings) -> Engine:
    """Load the engine the settings name (or the one whose file is in the model dir)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineLoadError(f"model dir {model_dir} does not exist")
    kind = detect_kind(model_dir) if settings.engine == "auto" else settings.engine
    path = model_dir / ENGINES[kind][0]
    if not path.is_file():
        raise EngineLoadError(f"engine {kind} needs {path}, which is missing")
    engine = engine_class(kind).load(path, settings)  # type: ignore[attr-defined]
    logger.info("loaded %s engine from %s on %s", kind, path, engine.device)
    return engine


def warmup_inputs(signature: Signature, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-filled inputs fitting the signature, dynamic dims set to `batch` (leading) or 1."""
    arrays = {}
    for spec in signature.inputs:
        shape = tuple(
            (batch if i == 0 else 1) if d == DYNAMIC else d for i, d in enumerate(spec.shape)
        )
        arrays[spec.name] = _zeros(spec, shape)
    return arrays


def _zeros(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        out = np.empty(shape, dtype=object)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=spec.dtype)
