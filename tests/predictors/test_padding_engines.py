"""Padded batches in-process on the ONNX Runtime and Torch engines: requests of different lengths
share a batch per bucket, answers equal each request run alone, per-position outputs come back
at each request's own length. The engine is held busy so the batches form deterministically
(run_held from test_batching_engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from test_batching_engine import Recorder, run_held
from text_models import model_dir, tokens

from kbundle.predictors.batcher import DynamicBatcher
from kbundle.predictors.predictor import EnginePredictor
from kbundle.samples_text import INPUTS, OUTPUTS, text_encoder
from kbundle.settings import ModelSettings

PADDING = {
    "dim": "s",
    "buckets": [16, 32, 64],
    "pad_values": {"input_ids": 0, "attention_mask": 0},
    "mask": "attention_mask",
}
# Queue order; buckets 16, 32, 16, over 64 (alone), 32, 16 -> batches of 3, 2 and 1.
LENGTHS = [5, 20, 9, 100, 30, 16]


def _onnx_dir(root: Path) -> Path:
    return model_dir(root / "onnx")


def _torch_dir(root: Path) -> Path:
    pytest.importorskip("torch", reason="the torch extra is not installed")
    from kbundle.predictors.torch_export import save_program

    directory = root / "torch"
    directory.mkdir()
    save_program(text_encoder(), INPUTS, OUTPUTS, directory / "model.pt2", atol=1e-4)
    return directory


@pytest.fixture(scope="module", params=["onnx", "torch"])
def predictor(request, tmp_path_factory) -> EnginePredictor:
    root = Path(tmp_path_factory.mktemp(f"padding-{request.param}"))
    directory = _onnx_dir(root) if request.param == "onnx" else _torch_dir(root)
    settings = ModelSettings(max_batch_size=8, instances=1, intra_op_threads=1, padding=PADDING)
    model = EnginePredictor(f"enc-{request.param}", directory, settings)
    assert model.load(), model.load_error
    yield model
    model.stop()


def test_requests_share_a_batch_per_bucket_and_get_their_own_answers(predictor) -> None:
    assert predictor.batcher.padding is not None
    recorder = Recorder(predictor.name)
    batcher = DynamicBatcher(
        predictor.runner, predictor.name, 8, 5.0, recorder, predictor.batcher.padding
    )
    requests = [tokens(length, seed) for seed, length in enumerate(LENGTHS)]
    results = asyncio.run(run_held(batcher, requests, outputs=[OUTPUTS] * len(requests)))
    assert recorder.sizes == [3, 2, 1]
    for arrays, outputs, length in zip(requests, results, LENGTHS, strict=True):
        alone = predictor.runner.run_sync(arrays, OUTPUTS)  # never padded
        got = dict(zip(OUTPUTS, outputs, strict=True))
        assert got["hidden"].shape == (1, length, 64) and got["logits"].shape == (1, 3)
        for name, want in zip(OUTPUTS, alone, strict=True):
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=0, err_msg=name)
