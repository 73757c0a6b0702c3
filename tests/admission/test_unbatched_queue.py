"""The unbatched queue's slot accounting, on a real ONNX engine in this process: every way out of
the queue (run, deadline, cancel) gives its slot back, so a bounded queue never fills with ghosts
and starts refusing for good (the server tests cannot see the count itself)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from queue_model import build_slow_model, expected

from kbundle.errors import DeadlineExceeded, QueueFull
from kbundle.predictors.admission import Admission, QueuePolicy
from kbundle.predictors.engine import load_engine
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.runner import EngineRunner
from kbundle.predictors.unbatched import UnbatchedQueue
from kbundle.settings import resolve_settings


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    model_dir = build_slow_model(tmp_path_factory.mktemp("unbatched") / "m", "warmup: false\n")
    engine = load_engine(model_dir, resolve_settings({"intra_op_threads": 1}, env={}))
    runner = EngineRunner(engine)
    admission = Admission("unbatched-unit", QueuePolicy(max_queue_size=2))
    yield UnbatchedQueue(runner, admission, BatchMetrics("unbatched-unit"), batchable=True)
    runner.close()


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 256)).astype(np.float32)


def test_every_way_out_of_the_queue_gives_the_slot_back(queue):
    blocker, blocker_future = queue.submit({"x": rows(8192)}, ["y"], None)
    late, late_future = queue.submit({"x": rows(8)}, ["y"], time.monotonic() + 0.02)
    _, gone_future = queue.submit({"x": rows(8)}, ["y"], None)
    with pytest.raises(QueueFull, match="max_queue_size"):  # two wait behind the blocker
        queue.submit({"x": rows(8)}, ["y"], None)
    assert gone_future.cancel()  # the client left
    with pytest.raises(DeadlineExceeded):
        queue.wait(late, late_future)
    [y] = queue.wait(blocker, blocker_future)
    np.testing.assert_allclose(y, expected(rows(8192)), atol=1e-5)
    assert queue.queued == 0


def test_the_async_path_answers_at_the_deadline_and_frees_the_slot(queue):
    async def scenario() -> None:
        blocker = asyncio.ensure_future(queue.infer({"x": rows(8192)}, ["y"], None))
        await asyncio.sleep(0.05)  # the blocker holds the engine instance
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await queue.infer({"x": rows(8)}, ["y"], time.monotonic() + 0.05)
        answered_after = time.monotonic() - started
        assert not blocker.done(), "the deadline was answered before the engine freed up"
        leaver = asyncio.ensure_future(queue.infer({"x": rows(8)}, ["y"], None))
        await asyncio.sleep(0)
        leaver.cancel()
        await asyncio.gather(blocker, leaver, return_exceptions=True)
        assert answered_after < 1.0, answered_after

    asyncio.run(scenario())
    assert queue.queued == 0


def test_a_running_request_is_let_finish_past_its_deadline(queue):
    job, future = queue.submit({"x": rows(4096)}, ["y"], time.monotonic() + 0.05)
    deadline = time.monotonic() + 10
    while not (future.running() or future.done()):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    [y] = queue.wait(job, future)  # it started in time: its answer is not thrown away
    assert y.shape == (4096, 256)
    assert queue.queued == 0
