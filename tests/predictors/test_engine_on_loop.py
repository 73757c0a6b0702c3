"""Short batches of a CPU engine run on the event loop thread (engine_on_loop_ms), on a real
ONNX Runtime engine: which thread ran each batch is recorded, and every request still gets
exactly its own rows or its own error."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from batching_models import build_batching_model, expected, request_arrays

from kbundle.cpu_budget import detect
from kbundle.errors import InvalidRequest
from kbundle.predictors.batcher import DynamicBatcher, EngineOnLoop
from kbundle.predictors.predictor import ENGINE_ON_LOOP_MS, EnginePredictor, engine_on_loop_ms
from kbundle.predictors.runner import EngineRunner
from kbundle.settings import ModelSettings

OUTPUTS = ("echo", "sum", "row")


class ThreadsSeen:
    """The real engine, plus the name of the thread each call ran on (and an optional delay)."""

    def __init__(self, engine, delay_s: float = 0.0):
        self.engine = engine
        self.delay_s = delay_s
        self.device = engine.device
        self.threads: list[str] = []

    def run(self, inputs, output_names):
        self.threads.append(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.engine.run(inputs, output_names)

    def close(self) -> None:
        pass  # the module's predictor owns the real engine and closes it


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> EnginePredictor:
    model_dir = build_batching_model(Path(tmp_path_factory.mktemp("on-loop")) / "m")
    settings = ModelSettings(max_batch_size=8, intra_op_threads=1)
    model = EnginePredictor("on-loop", model_dir, settings)
    assert model.load(), model.load_error
    yield model
    model.stop()


def batcher_for(predictor, limit_s: float, delay_s: float = 0.0):
    seen = ThreadsSeen(predictor.loaded_engine, delay_s)
    runner = EngineRunner(seen, instances=1)
    return DynamicBatcher(runner, predictor.name, 8, 1.0, on_loop_s=limit_s), seen, runner


def check(inputs: dict, outputs: list) -> None:
    want = expected(inputs)
    for name, got in zip(OUTPUTS, outputs, strict=True):
        np.testing.assert_array_equal(got, want[name], err_msg=name)


async def one_by_one(batcher: DynamicBatcher, count: int) -> None:
    for tag in range(count):
        inputs = request_arrays(tag, 1, 3)
        check(inputs, await batcher.infer(inputs, OUTPUTS))


async def burst(batcher: DynamicBatcher, requests: list[dict]) -> list:
    tasks = [batcher.infer(inputs, OUTPUTS) for inputs in requests]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_after_the_first_timed_batch_short_batches_run_on_the_loop_thread(predictor):
    batcher, seen, runner = batcher_for(predictor, limit_s=1.0)
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    try:
        asyncio.run(one_by_one(batcher, 4))
        assert seen.threads[0].startswith("engine")  # not timed yet: the engine thread
        assert seen.threads[1:] == [loop_thread] * 3, seen.threads
        requests = [request_arrays(tag, 1 + tag % 3, 3) for tag in range(24)]
        for inputs, outputs in zip(requests, asyncio.run(burst(batcher, requests)), strict=True):
            check(inputs, outputs)
        assert set(seen.threads[4:]) == {loop_thread}
    finally:
        runner.close()


def test_a_failing_request_on_the_loop_fails_alone(predictor):
    batcher, seen, runner = batcher_for(predictor, limit_s=1.0)
    try:
        asyncio.run(one_by_one(batcher, 1))
        requests = [request_arrays(tag, 2, 3, bad=(tag == 3)) for tag in range(6)]
        results = asyncio.run(burst(batcher, requests))
        assert isinstance(results[3], InvalidRequest) and "on-loop" in results[3].message
        for tag in (0, 1, 2, 4, 5):
            check(requests[tag], results[tag])
        assert seen.threads[-1] == threading.current_thread().name
    finally:
        runner.close()


@pytest.mark.parametrize("limit_s", [0.0, 0.002])
def test_off_or_too_slow_every_batch_runs_on_the_engine_thread(predictor, limit_s):
    """limit 0: never on the loop; a 20 ms engine against a 2 ms limit: never either, so the
    loop keeps answering while a long batch runs."""
    batcher, seen, runner = batcher_for(predictor, limit_s=limit_s, delay_s=0.02)
    try:
        asyncio.run(one_by_one(batcher, 3))
        requests = [request_arrays(tag, 1, 3) for tag in range(6)]
        for inputs, outputs in zip(requests, asyncio.run(burst(batcher, requests)), strict=True):
            check(inputs, outputs)
        assert all(name.startswith("engine") for name in seen.threads), seen.threads
    finally:
        runner.close()


def test_the_estimate_scales_with_rows_and_needs_a_timed_batch():
    on_loop = EngineOnLoop(0.0015)
    assert not on_loop.fits(1)  # nothing timed yet
    on_loop.observe(1, 0.001)
    assert on_loop.fits(1) and not on_loop.fits(2)
    never = EngineOnLoop(0.0)
    never.observe(1, 1e-6)
    assert not never.fits(1)


def test_derived_only_for_a_cpu_engine_with_one_cpu(predictor, tmp_path):
    one_cpu, two_cpus = tmp_path / "one", tmp_path / "two"
    for root, quota in ((one_cpu, "100000 100000"), (two_cpus, "200000 100000")):
        root.mkdir()
        (root / "cpu.max").write_text(quota + "\n")
    engine = predictor.loaded_engine
    derived = ModelSettings()
    assert engine_on_loop_ms(derived, engine, detect(str(one_cpu)).threads) == ENGINE_ON_LOOP_MS
    if len(detect(str(two_cpus)).affinity) >= 2:
        assert engine_on_loop_ms(derived, engine, detect(str(two_cpus)).threads) == 0.0
    gpu = ThreadsSeen(engine)
    gpu.device = "cuda:0 (a GPU engine)"
    assert engine_on_loop_ms(derived, gpu, detect(str(one_cpu)).threads) == 0.0
    explicit = ModelSettings(engine_on_loop_ms=0.5)
    assert engine_on_loop_ms(explicit, gpu, detect(str(two_cpus)).threads) == 0.5


async def drive(coro) -> tuple[bool, object]:
    """Run `coro` by hand: (whether it finished before its first await, its result)."""
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        return True, done.value
    while True:
        waiting._asyncio_future_blocking = False  # what a Task does with a yielded future
        await waiting
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            return False, done.value


def test_a_request_with_nothing_behind_it_runs_before_its_first_await(predictor):
    """Empty queue, idle engine, no other request on its way: it is the whole batch already, so
    it runs on the loop inside `infer` and is answered without a loop turn."""
    batcher, seen, runner = batcher_for(predictor, limit_s=1.0)

    async def steps():
        await one_by_one(batcher, 1)  # the first batch is timed on the engine thread
        for tag, behind in ((5, True), (6, False)):
            inputs = request_arrays(tag, 2, 3)
            at_once, outputs = await drive(batcher.infer(inputs, OUTPUTS, nothing_behind=behind))
            assert at_once is behind
            check(inputs, outputs)

    try:
        asyncio.run(steps())
        assert seen.threads[1:] == [threading.current_thread().name] * 2, seen.threads
    finally:
        runner.close()


def test_nothing_behind_still_waits_behind_a_running_batch_and_joins_the_next(predictor):
    batcher, seen, runner = batcher_for(predictor, limit_s=0.0, delay_s=0.05)

    async def steps():
        first = asyncio.ensure_future(
            batcher.infer(request_arrays(0, 1, 3), OUTPUTS, nothing_behind=True)
        )
        await asyncio.sleep(0.01)  # running on the engine thread for 50 ms
        requests = [request_arrays(tag, 1, 3) for tag in range(1, 4)]
        later = [batcher.infer(r, OUTPUTS, nothing_behind=True) for r in requests]
        results = await asyncio.gather(first, *later)
        for inputs, outputs in zip([request_arrays(0, 1, 3), *requests], results, strict=True):
            check(inputs, outputs)

    try:
        asyncio.run(steps())
        assert len(seen.threads) == 2, seen.threads  # the three queued ones shared one batch
    finally:
        runner.close()
