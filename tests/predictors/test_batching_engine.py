"""The dynamic batcher in-process, on a real ONNX Runtime engine.

The engine's only instance is held busy by a job that waits on an event, so requests queue
deterministically and the test decides when the batch forms (no timing assertions).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from batching_models import build_batching_model, expected, request_arrays

from kbundle.errors import DeadlineExceeded, InvalidRequest
from kbundle.predictors.batcher import DynamicBatcher
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.model_config import model_config
from kbundle.predictors.predictor import EnginePredictor
from kbundle.serving.arrays import ArrayRequest
from kbundle.settings import ModelSettings

OUTPUTS = ("echo", "sum", "row")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> EnginePredictor:
    model_dir = build_batching_model(Path(tmp_path_factory.mktemp("batching")) / "m")
    settings = ModelSettings(
        max_batch_size=8, max_batch_delay_ms=5.0, instances=1, intra_op_threads=1
    )
    model = EnginePredictor("batching-unit", model_dir, settings)
    assert model.load(), model.load_error
    yield model
    model.stop()


class Recorder(BatchMetrics):
    """Real metrics plus a list of the batch sizes, so the test can see what was formed."""

    def __init__(self, name: str):
        super().__init__(name)
        self.sizes: list[int] = []

    def observe_batch(self, rows: int, seconds: float) -> None:
        super().observe_batch(rows, seconds)
        self.sizes.append(rows)


def fresh_batcher(
    predictor: EnginePredictor, max_batch_size: int = 8
) -> tuple[DynamicBatcher, Recorder]:
    recorder = Recorder(predictor.name)
    return DynamicBatcher(predictor.runner, predictor.name, max_batch_size, 5.0, recorder), recorder


def hold_engine(batcher: DynamicBatcher) -> threading.Event:
    """Occupy the batcher's one instance with a job that waits on the returned event, as a
    running batch would; setting the event frees the instance and dispatches. Call on the loop."""
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    blocker = batcher.runner.submit(gate.wait, 10)
    batcher._idle -= 1

    def release_instance() -> None:
        batcher._idle += 1
        batcher._dispatch()

    blocker.add_done_callback(lambda _: loop.call_soon_threadsafe(release_instance))
    return gate


async def run_held(
    batcher: DynamicBatcher,
    requests: list[dict],
    cancel: int | None = None,
    outputs: list | None = None,
) -> list:
    """Hold the engine, queue every request, optionally cancel one, release, gather results."""
    gate = hold_engine(batcher)
    outputs = outputs or [OUTPUTS] * len(requests)
    tasks = [
        asyncio.ensure_future(batcher.infer(r, o)) for r, o in zip(requests, outputs, strict=True)
    ]
    await asyncio.sleep(0.01)
    assert batcher.queued == len(requests)
    if cancel is not None:
        tasks[cancel].cancel()
    gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def check_rows(inputs: dict, outputs: list[np.ndarray]) -> None:
    want = expected(inputs)
    for name, got in zip(OUTPUTS, outputs, strict=True):
        np.testing.assert_array_equal(got, want[name], err_msg=name)


def test_mixed_batch_sizes_each_get_their_own_rows(predictor):
    batcher, recorder = fresh_batcher(predictor)
    sizes = [1, 3, 2, 1, 12, 4, 1]  # 12 > max_batch_size 8: runs alone
    requests = [request_arrays(tag, rows, 3) for tag, rows in enumerate(sizes)]
    results = asyncio.run(run_held(batcher, requests))
    for inputs, outputs in zip(requests, results, strict=True):
        check_rows(inputs, outputs)
    assert max(recorder.sizes) == 12
    assert any(1 < size <= 8 for size in recorder.sizes), recorder.sizes
    assert sum(recorder.sizes) == sum(sizes)


def test_differing_non_batch_dims_never_share_a_batch(predictor):
    batcher, recorder = fresh_batcher(predictor)
    widths = [3, 5, 3, 5, 3, 5]
    requests = [request_arrays(tag, 1, width) for tag, width in enumerate(widths)]
    results = asyncio.run(run_held(batcher, requests))
    for inputs, outputs in zip(requests, results, strict=True):
        check_rows(inputs, outputs)
    assert sorted(recorder.sizes) == [3, 3]  # one batch per width


def test_differing_requested_outputs_never_share_a_batch(predictor):
    batcher, recorder = fresh_batcher(predictor)
    requests = [request_arrays(tag, 2, 3) for tag in range(4)]
    wanted = [("sum",), ("echo", "sum"), ("sum",), ("echo", "sum")]
    results = asyncio.run(run_held(batcher, requests, outputs=wanted))
    for inputs, names, outputs in zip(requests, wanted, results, strict=True):
        assert len(outputs) == len(names)
        for name, got in zip(names, outputs, strict=True):
            np.testing.assert_array_equal(got, expected(inputs)[name])
    assert recorder.sizes == [4, 4]


def test_engine_failure_fails_only_the_bad_request(predictor):
    batcher, recorder = fresh_batcher(predictor)
    requests = [request_arrays(tag, 2, 3, bad=(tag == 2)) for tag in range(5)]
    results = asyncio.run(run_held(batcher, requests))
    for tag, (inputs, outputs) in enumerate(zip(requests, results, strict=True)):
        if tag == 2:
            # An index past the table is the client's fault: 400, our words, no engine text.
            assert isinstance(outputs, InvalidRequest)
            assert "batching-unit" in outputs.message and "shapes or values" in outputs.message
            assert "idx [2, 1]" in outputs.message and "Gather" not in outputs.message
        else:
            check_rows(inputs, outputs)


def test_cancelled_request_does_not_poison_the_batch(predictor):
    batcher, recorder = fresh_batcher(predictor)
    requests = [request_arrays(tag, 1, 3) for tag in range(4)]
    results = asyncio.run(run_held(batcher, requests, cancel=1))
    assert isinstance(results[1], asyncio.CancelledError)
    for tag in (0, 2, 3):
        check_rows(requests[tag], results[tag])
    assert sum(recorder.sizes) == 3


def test_lone_request_dispatches_without_waiting_for_the_delay(predictor):
    """With the engine idle a request runs at once, even with a long max_batch_delay."""
    recorder = Recorder(predictor.name)
    batcher = DynamicBatcher(predictor.runner, predictor.name, 8, 60_000.0, recorder)

    async def one():
        return await asyncio.wait_for(batcher.infer(request_arrays(7, 1, 3), OUTPUTS), timeout=10)

    check_rows(request_arrays(7, 1, 3), asyncio.run(one()))
    assert recorder.sizes == [1]


def test_predictor_routes_through_the_batcher(predictor):
    assert predictor.batcher is not None
    inputs = request_arrays(3, 4, 2)
    response = asyncio.run(predictor.infer_arrays(ArrayRequest(id="r", inputs=inputs)))
    check_rows(inputs, [response.outputs[name] for name in OUTPUTS])


def test_batching_off_when_max_batch_size_is_zero(tmp_path):
    model_dir = build_batching_model(tmp_path / "m")
    model = EnginePredictor("nobatch", model_dir, ModelSettings(max_batch_size=0))
    assert model.load(), model.load_error
    try:
        assert model.batcher is None
        config = model_config(model)
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
        assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, -1]}
        inputs = request_arrays(1, 2, 2)
        response = asyncio.run(model.infer_arrays(ArrayRequest(id="r", inputs=inputs)))
        check_rows(inputs, [response.outputs[name] for name in OUTPUTS])
    finally:
        model.stop()


def test_with_a_peer_instance_busy_the_batch_waits_for_the_delay_to_fill(tmp_path):
    """instances=2, one busy: a free instance waits (up to max_batch_delay) for more rows."""
    model_dir = build_batching_model(tmp_path / "m")
    settings = ModelSettings(max_batch_size=8, max_batch_delay_ms=300.0, instances=2)
    model = EnginePredictor("two-instances", model_dir, settings)
    assert model.load(), model.load_error
    recorder = Recorder(model.name)
    batcher = DynamicBatcher(model.runner, model.name, 8, 300.0, recorder)
    requests = [request_arrays(tag, 1, 3) for tag in range(3)]

    async def scenario():
        gate = threading.Event()
        model.runner.submit(gate.wait, 10)
        batcher._idle -= 1  # one of the two instances is running a batch
        first = asyncio.ensure_future(batcher.infer(requests[0], OUTPUTS))
        await asyncio.sleep(0.02)  # the free instance holds the first request...
        rest = [asyncio.ensure_future(batcher.infer(r, OUTPUTS)) for r in requests[1:]]
        results = await asyncio.gather(first, *rest)  # ...and takes the later ones along
        gate.set()
        return results

    try:
        results = asyncio.run(scenario())
        for inputs, outputs in zip(requests, results, strict=True):
            check_rows(inputs, outputs)
        assert recorder.sizes == [3]
    finally:
        model.stop()


async def run_held_threads(batcher: DynamicBatcher, requests: list[dict], cancel: int) -> list:
    """As run_held, but each request comes from its own thread through `submit` (the gRPC
    server's entry), and request `cancel` is cancelled from its thread while queued."""
    loop = asyncio.get_running_loop()
    gate = hold_engine(batcher)
    waiters = [None] * len(requests)

    def one(index: int) -> object:
        waiters[index] = batcher.submit(loop, requests[index], OUTPUTS)
        return waiters[index]

    submitted = await asyncio.gather(*(asyncio.to_thread(one, i) for i in range(len(requests))))
    for _ in range(100):  # the drain runs on this loop: let it take the inbox
        if batcher.queued == len(requests):
            break
        await asyncio.sleep(0.01)
    assert batcher.queued == len(requests)
    assert submitted[cancel].cancel()

    def wait(waiter) -> object:
        try:
            return waiter.result()
        except BaseException as exc:  # the cancelled one
            return exc

    gate.set()
    return await asyncio.gather(*(asyncio.to_thread(wait, w) for w in submitted))


def test_submit_from_threads_batches_and_skips_a_cancelled_request(predictor):
    batcher, recorder = fresh_batcher(predictor)
    sizes = [1, 2, 1, 3, 1]
    requests = [request_arrays(tag, rows, 3) for tag, rows in enumerate(sizes)]
    results = asyncio.run(run_held_threads(batcher, requests, cancel=1))
    assert type(results[1]).__name__ == "CancelledError"
    for tag in (0, 2, 3, 4):
        check_rows(requests[tag], results[tag])
    assert recorder.sizes == [sum(sizes) - sizes[1]]  # one batch, without the cancelled rows


def test_queued_deadlines_fail_each_at_its_own_time_whatever_the_queue_order(predictor):
    """Requests queued behind a held engine with deadlines 0.6 s, 0.1 s, none and 0.3 s (a later
    arrival may expire first): each fails at its deadline while the engine is still held, the
    one without a deadline runs once the engine is free."""
    batcher, _ = fresh_batcher(predictor)

    async def scenario() -> tuple[list, list]:
        loop = asyncio.get_running_loop()
        gate = hold_engine(batcher)
        start = loop.time()
        seconds = [0.6, 0.1, None, 0.3]
        requests = [request_arrays(tag, 1, 3) for tag in range(len(seconds))]
        ended: list = [None] * len(seconds)

        async def one(index: int) -> object:
            wait = seconds[index]
            deadline = None if wait is None else time.monotonic() + wait
            try:
                return await batcher.infer(requests[index], OUTPUTS, deadline=deadline)
            except DeadlineExceeded as exc:
                return exc
            finally:
                ended[index] = loop.time() - start

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(seconds))]
        await asyncio.sleep(0.9)  # every deadline has passed; the engine is still held
        gate.set()
        return await asyncio.gather(*tasks), ended, requests

    results, ended, requests = asyncio.run(scenario())
    for index in (0, 1, 3):
        assert isinstance(results[index], DeadlineExceeded), results[index]
    check_rows(requests[2], results[2])
    assert ended[1] < 0.3 < ended[3] < 0.6 < ended[0] < 0.9 < ended[2]
