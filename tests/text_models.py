"""The small text encoder (kbundle.samples_text) built once per test session, plus helpers.

The ONNX file is exported from torch by `kbundle.predictors.torch_export.save_onnx` (dim_params
`b` and `s`), so the tests serve a model none of our ONNX helpers wrote by hand.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from kbundle.samples_text import OUTPUTS, build_text_encoder

CACHE = Path.home() / ".cache" / "kbundle" / "test-text-encoder-v1"


@cache
def encoder_onnx() -> Path:
    """model.onnx of the 2-layer, hidden-64 encoder (built once, cached across runs)."""
    path = CACHE / "model.onnx"
    if not path.is_file():
        build_text_encoder(CACHE)
    return path


def model_dir(root: Path, config: str = "", unnamed: bool = False) -> Path:
    """A model dir with the encoder and `config` as kbundle.yaml; `unnamed` strips dim_params
    from the inputs, so no validator can know the two must agree (only the engine finds out)."""
    root.mkdir(parents=True, exist_ok=True)
    if unnamed:
        model = onnx.load(str(encoder_onnx()))
        for value in model.graph.input:
            for index, dim in enumerate(value.type.tensor_type.shape.dim):
                dim.dim_param = f"{value.name}_{index}"
        onnx.save(model, str(root / "model.onnx"))
    else:
        shutil.copy(encoder_onnx(), root / "model.onnx")
    if config:
        (root / "kbundle.yaml").write_text(config)
    return root


def tokens(length: int, seed: int, rows: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 1000, (rows, length)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@cache
def _session() -> ort.InferenceSession:
    return ort.InferenceSession(str(encoder_onnx()), providers=["CPUExecutionProvider"])


def unpadded(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The engine's answer for one request on its own, never padded (the reference)."""
    return dict(zip(OUTPUTS, _session().run(list(OUTPUTS), inputs), strict=True))
