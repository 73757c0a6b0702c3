"""The request core's admission places (RequestCore.admit) on a real predictor with a queue of 2:
a request let in before its body is read holds a place until the core queues it or the transport
drops it, so requests admitted in one loop turn cannot overfill the queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from batching_models import build_batching_model, expected, request_arrays
from kserve.model_repository import ModelRepository

from kbundle.errors import KBundleError, Status
from kbundle.predictors.predictor import EnginePredictor
from kbundle.serving.arrays import ArrayRequest
from kbundle.serving.core import CallContext, RequestCore
from kbundle.settings import ModelSettings

CALL = CallContext(protocol="rest")


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> RequestCore:
    model_dir = build_batching_model(Path(tmp_path_factory.mktemp("places")) / "m")
    settings = ModelSettings(max_batch_size=8, max_queue_size=2, intra_op_threads=1)
    model = EnginePredictor("places", model_dir, settings)
    assert model.load(), model.load_error
    registry = ModelRepository()
    registry.update(model)
    yield RequestCore(registry)
    model.stop()


def test_places_fill_the_queue_and_come_back_when_released_or_used(core):
    first, second = core.admit("places", CALL), core.admit("places", CALL)
    with pytest.raises(KBundleError) as refused:
        core.admit("places", CALL)  # the queue is empty, but both places are taken
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert "max_queue_size" in refused.value.message
    first.release()
    first.release()  # once only: a second release must not free another place
    third = core.admit("places", CALL)
    with pytest.raises(KBundleError):
        core.admit("places", CALL)
    inputs = request_arrays(1, 2, 3)
    request = ArrayRequest(id="r", inputs=inputs)
    _, response = asyncio.run(core.infer("places", request, CALL, admitted=second))
    assert set(response.outputs) == set(expected(inputs))
    fourth = core.admit("places", CALL)  # `infer` handed the second place back
    third.release()
    fourth.release()
    again = core.admit("places", CALL)
    assert again is not None  # all free again
    again.release()


def test_a_model_that_is_not_served_gets_no_place(core):
    assert core.admit("no-such-model", CALL) is None  # `infer` answers it 404


def test_only_a_request_with_no_admitted_request_behind_it_is_marked_nothing_behind(core):
    """The batcher may start a request at once only when no other request was read and is still
    on its way to the queue; the core knows that from its places."""
    mine, other = core.admit("places", CALL), core.admit("places", CALL)
    first = ArrayRequest(id="a", inputs=request_arrays(1, 1, 3))
    asyncio.run(core.infer("places", first, CALL, admitted=mine))
    assert not first.nothing_behind  # `other` was admitted and not queued yet
    last = ArrayRequest(id="b", inputs=request_arrays(2, 1, 3))
    asyncio.run(core.infer("places", last, CALL, admitted=other))
    assert last.nothing_behind
    unadmitted = ArrayRequest(id="c", inputs=request_arrays(3, 1, 3))
    asyncio.run(core.infer("places", unadmitted, CALL))
    assert not unadmitted.nothing_behind  # a transport that does not admit cannot know
