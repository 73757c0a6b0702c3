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

from kbundle.errors import EngineLoadError, InvalidRequest
from kbundle.settings import ModelSettings
from kbundle.specs import DYNAMIC, Signature, TensorSpec

logger = logging.getLogger("kbundle.engine")

ShapeRange = tuple[tuple[int, ...], tuple[int, ...]]


class Engine(ABC):
    """One loaded model, ready to run batches."""

    kind: ClassVar[str]
    model_file: ClassVar[str]

    signature: Signature
    device: str  # where it runs, in words, for logs and status
    # Per input: (min shape, max shape) the engine was compiled for (TensorRT profiles,
    # torch.export Dim ranges). Empty = any shape the signature allows.
    shape_ranges: Mapping[str, ShapeRange] = {}

    def check_shapes(self, model_name: str, inputs: Mapping[str, np.ndarray]) -> None:
        """InvalidRequest (400) when an input lies outside the range the engine was built for."""
        for name, (low, high) in self.shape_ranges.items():
            array = inputs.get(name)
            if array is None:
                continue
            for axis, (got, lo, hi) in enumerate(zip(array.shape, low, high, strict=False)):
                if not lo <= got <= hi:
                    raise InvalidRequest(
                        f"model '{model_name}' input '{name}': dim {axis} is {got}, outside the "
                        f"{self.kind} engine's range {lo}..{hi} (shape {list(array.shape)}, "
                        f"allowed {list(low)}..{list(high)})"
                    )

    def max_batch_rows(self) -> int | None:
        """The most rows one call may carry: the smallest leading-dim max over the inputs with a
        range (a TensorRT profile's max, an ORT TensorRT-EP profile, a torch Dim). None: no cap."""
        tops = [high[0] for _, high in self.shape_ranges.values() if high]
        return min(tops) if tops else None

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
    kinds = present_kinds(model_dir) if settings.engine == "auto" else [settings.engine]
    if not kinds:
        detect_kind(model_dir)  # raises, naming the files it looked for
    for kind in kinds:
        path = model_dir / ENGINES[kind][0]
        if not path.is_file():
            raise EngineLoadError(f"engine {kind} needs {path}, which is missing")
        try:
            engine = engine_class(kind).load(path, settings)  # type: ignore[attr-defined]
        except EngineLoadError as exc:
            # Only engine: auto with device: auto falls back, and says so; a named engine or
            # device: cuda fails with the reason instead of quietly serving something else.
            if kind == kinds[-1] or settings.device != "auto":
                raise
            logger.warning(
                "%s engine not usable here (%s): falling back to %s",
                kind,
                exc,
                kinds[kinds.index(kind) + 1],
            )
            continue
        logger.info("loaded %s engine from %s on %s", kind, path, engine.device)
        return engine
    raise AssertionError("unreachable")


def present_kinds(model_dir: Path) -> list[str]:
    """Engines whose file is in the model dir, best first (plan, then pt2, then onnx)."""
    return [k for k in ("tensorrt", "torch", "onnx") if (model_dir / ENGINES[k][0]).is_file()]


def warmup_inputs(
    signature: Signature, batch: int = 1, ranges: Mapping[str, ShapeRange] | None = None
) -> dict[str, np.ndarray]:
    """Zero-filled inputs fitting the signature, dynamic dims set to `batch` (leading) or 1,
    raised to the engine's minimum where it has one (a TensorRT profile may start above 1)."""
    ranges = ranges or {}
    batch = max([batch, *(low[0] for low, _ in ranges.values() if low)])  # one batch for all
    arrays = {}
    for spec in signature.inputs:
        shape = tuple(
            (batch if i == 0 else 1) if d == DYNAMIC else d for i, d in enumerate(spec.shape)
        )
        low = ranges.get(spec.name, ((),))[0]
        shape = tuple(max(d, lo) for d, lo in zip(shape, low, strict=False)) + shape[len(low) :]
        arrays[spec.name] = _zeros(spec, shape)
    return arrays


def _zeros(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        out = np.empty(shape, dtype=object)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=spec.dtype)
