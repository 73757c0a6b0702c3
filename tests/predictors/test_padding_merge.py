"""Merging neighbouring buckets by measured engine cost (padding_plan.py): the split of the queue
the cost model asks for, the online fit, and, on the real ONNX Runtime encoder, merged batches
whose answers equal each request run alone, cut back to each request's own length."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_batching_engine import Recorder, run_held
from text_models import model_dir, tokens

from kbundle.predictors.batcher import DynamicBatcher
from kbundle.predictors.padding_plan import MIN_CALLS, EngineCost, plan
from kbundle.predictors.predictor import EnginePredictor
from kbundle.samples_text import OUTPUTS
from kbundle.settings import ModelSettings

BUCKETS = (16, 32, 64, 128)
PADDING = {
    "dim": "s",
    "buckets": [16, 32, 64],
    "pad_values": {"input_ids": 0, "attention_mask": 0},
    "mask": "attention_mask",
}
# Buckets 16, 32, 16, over 64 (alone), 32, 16, 64.
LENGTHS = [5, 20, 9, 100, 30, 16, 40]


def test_a_dominant_fixed_cost_merges_every_queued_bucket_into_one_run() -> None:
    assert plan([2, 3, 5, 10], BUCKETS, 0, (5e-3, 1e-9), 32) == (0, 3)


def test_a_cost_linear_in_positions_keeps_each_bucket_apart() -> None:
    cpu_like = (0.6e-3, 45e-6)  # ONNX Runtime on 2 cores: ~0.6 ms a call, 45 us a position
    assert plan([2, 3, 5, 10], BUCKETS, 0, cpu_like, 32) == (0, 0)
    assert plan([2, 3, 5, 10], BUCKETS, 2, cpu_like, 32) == (2, 2)


def test_a_lone_short_request_joins_the_next_bucket_when_a_call_costs_more_than_its_padding() -> (
    None
):
    # one request in bucket 16 padded to 32 costs 16 positions (16 us) < a call (1 ms)
    assert plan([1, 6, 0, 0], BUCKETS, 1, (1e-3, 1e-6), 32) == (0, 1)
    # with ten of them, their padding (160 us) is still cheaper than a call: merged too
    assert plan([10, 6, 0, 0], BUCKETS, 0, (1e-3, 1e-6), 32) == (0, 1)
    # ... but not past max_batch_size: 40 rows would need two calls anyway
    assert plan([30, 10, 0, 0], BUCKETS, 0, (1e-3, 1e-6), 32) == (0, 0)


def test_the_fit_recovers_a_linear_engine_cost_and_waits_for_enough_calls() -> None:
    cost = EngineCost()
    sizes = [16, 64, 256, 1024, 32, 512]
    for index in range(MIN_CALLS - 1):
        cost.observe(sizes[index % len(sizes)], 2e-3 + 1e-5 * sizes[index % len(sizes)])
    assert cost.estimate() is None
    cost.observe(128, 2e-3 + 1e-5 * 128)
    fixed, per_position = cost.estimate()
    assert fixed == pytest.approx(2e-3) and per_position == pytest.approx(1e-5)


def test_calls_all_of_one_size_give_no_fit() -> None:
    cost = EngineCost()
    for _ in range(3 * MIN_CALLS):
        cost.observe(64, 1e-3)
    assert cost.estimate() is None


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> EnginePredictor:
    directory = model_dir(Path(tmp_path_factory.mktemp("merge")) / "onnx")
    settings = ModelSettings(max_batch_size=8, instances=1, intra_op_threads=1, padding=PADDING)
    model = EnginePredictor("enc-merge", directory, settings)
    assert model.load(), model.load_error
    yield model
    model.stop()


def _run(predictor: EnginePredictor, cost: EngineCost, merge: bool = True) -> tuple[list, list]:
    padding = dataclasses.replace(predictor.batcher.padding, cost=cost, merge=merge)
    recorder = Recorder(predictor.name)
    batcher = DynamicBatcher(predictor.runner, predictor.name, 8, 5.0, recorder, padding)
    requests = [tokens(length, seed) for seed, length in enumerate(LENGTHS)]
    results = asyncio.run(run_held(batcher, requests, outputs=[OUTPUTS] * len(requests)))
    return recorder.sizes, results


def test_merged_buckets_share_one_batch_and_each_request_gets_its_own_answer(predictor) -> None:
    sizes, results = _run(predictor, EngineCost(fixed=1.0, per_position=0.0))
    assert sizes == [6, 1]  # 16, 32 and 64 merged, padded to 64; the 100 alone
    for seed, (length, outputs) in enumerate(zip(LENGTHS, results, strict=True)):
        alone = predictor.runner.run_sync(tokens(length, seed), OUTPUTS)  # never padded
        got = dict(zip(OUTPUTS, outputs, strict=True))
        assert got["hidden"].shape == (1, length, 64) and got["logits"].shape == (1, 3)
        for name, want in zip(OUTPUTS, alone, strict=True):
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize(
    ("cost", "merge"),
    [(EngineCost(fixed=0.0, per_position=1.0), True), (EngineCost(fixed=1.0), False)],
    ids=["padding-costs-more", "merge-off"],
)
def test_buckets_stay_apart_when_padding_costs_more_or_merge_is_off(predictor, cost, merge) -> None:
    sizes, results = _run(predictor, cost, merge)
    assert sizes == [3, 2, 1, 1]  # per bucket, oldest first: 16, 32, the 100, 64
    for length, outputs in zip(LENGTHS, results, strict=True):
        assert outputs[0].shape == (1, length, 64)
