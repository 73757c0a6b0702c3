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


# ONNX Runtime on 2 cores, this encoder (ms per call by padded positions, batch 1 to 32).
CPU_CALLS = [(32, 2.41), (64, 4.69), (128, 8.15), (256, 12.77), (512, 25.05), (1024, 46.84)]


def _fitted(calls: list[tuple[int, float]]) -> EngineCost:
    cost = EngineCost()
    for positions, ms in calls:
        cost.observe(positions, ms / 1000)
    return cost


def test_a_call_costing_the_same_at_any_size_merges_every_queued_bucket() -> None:
    assert plan([2, 3, 5, 10], BUCKETS, 0, (1e-3, 0.0), 32) == (0, 3)


def test_a_cpu_engine_keeps_buckets_apart_where_padding_costs_more_than_a_call() -> None:
    scale, exponent = _fitted(CPU_CALLS + CPU_CALLS).estimate()
    assert 0.8 < exponent < 0.95  # nearly linear in positions
    assert plan([2, 3, 5, 10], BUCKETS, 0, (scale, exponent), 32) == (0, 0)
    assert plan([2, 3, 5, 10], BUCKETS, 2, (scale, exponent), 32) == (2, 2)
    # buckets every 16: the few requests of a neighbouring bucket ride along (16 positions each)
    fine = (16, 32, 48, 64, 80, 96, 112, 128)
    first, last = plan([1, 2, 3, 3, 3, 4, 4, 4], fine, 6, (scale, exponent), 32)
    assert 0 < first < 6 and last == 7  # merged with neighbours, not with everything


def test_merging_stops_where_the_batch_would_need_a_second_call_anyway() -> None:
    assert plan([1, 6, 0, 0], BUCKETS, 1, (1e-3, 0.5), 32) == (0, 1)
    assert plan([10, 6, 0, 0], BUCKETS, 0, (1e-3, 0.5), 32) == (0, 1)
    assert plan([30, 10, 0, 0], BUCKETS, 0, (1e-3, 0.5), 32) == (0, 0)  # 40 rows: two calls


def test_the_fit_recovers_a_power_law_and_waits_for_enough_calls() -> None:
    sizes = [16, 64, 256, 1024, 32, 512, 128]
    calls = [(x, 1000 * 2e-4 * x**0.6) for x in sizes]
    assert _fitted(calls).estimate() is None  # MIN_CALLS - 1 calls
    scale, exponent = _fitted(calls + calls[:1]).estimate()
    assert scale == pytest.approx(2e-4) and exponent == pytest.approx(0.6)


def test_calls_all_of_one_size_give_no_fit() -> None:
    assert _fitted([(64, 1.0)] * (3 * MIN_CALLS)).estimate() is None


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
    sizes, results = _run(predictor, EngineCost(scale=1.0, exponent=0.0))
    assert sizes == [6, 1]  # 16, 32 and 64 merged, padded to 64; the 100 alone
    for seed, (length, outputs) in enumerate(zip(LENGTHS, results, strict=True)):
        alone = predictor.runner.run_sync(tokens(length, seed), OUTPUTS)  # never padded
        got = dict(zip(OUTPUTS, outputs, strict=True))
        assert got["hidden"].shape == (1, length, 64) and got["logits"].shape == (1, 3)
        for name, want in zip(OUTPUTS, alone, strict=True):
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize(
    ("cost", "merge"),
    [(EngineCost(scale=1.0, exponent=1.0), True), (EngineCost(scale=1.0, exponent=0.0), False)],
    ids=["padding-costs-more", "merge-off"],
)
def test_buckets_stay_apart_when_padding_costs_more_or_merge_is_off(predictor, cost, merge) -> None:
    sizes, results = _run(predictor, cost, merge)
    assert sizes == [3, 2, 1, 1]  # per bucket, oldest first: 16, 32, the 100, 64
    for length, outputs in zip(LENGTHS, results, strict=True):
        assert outputs[0].shape == (1, length, 64)
