"""One bad request under `--workers 2` is a 400 for its own client and nothing else: real
processes on 127.0.0.1, tritonclient over REST and gRPC, the text encoder (tests/text_models.py)
whose engine rejects a token past its vocabulary. The engine owner answers batched calls from the
batcher's future and unbatched ones from a task; both paths are checked, and the good requests
sharing a batch with the bad one get their own answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from text_models import model_dir, tokens, unpadded
from tritonclient.utils import InferenceServerException
from workers_helpers import start_workers

from kbundle.samples_text import OUTPUTS

MODEL = "enc"
BATCHED = "max_batch_size: 16\nmax_batch_delay_ms: 30\nintra_op_threads: 1\n"
UNBATCHED = "max_batch_size: 0\n"


def _serving(tmp_path_factory, config: str):
    root = Path(tmp_path_factory.mktemp("workers-faults-enc"))
    server = start_workers(MODEL, model_dir(root / MODEL, config), root)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    yield from _serving(tmp_path_factory, BATCHED)


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory):
    yield from _serving(tmp_path_factory, UNBATCHED)


def _infer(protocol: str, server, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = httpclient if protocol == "rest" else grpcclient
    client = module.InferenceServerClient(
        server.http_url if protocol == "rest" else server.grpc_url
    )
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(MODEL, tensors, outputs=[module.InferRequestedOutput(n) for n in OUTPUTS])
    return {n: result.as_numpy(n) for n in OUTPUTS}


def _poisoned(seed: int) -> dict[str, np.ndarray]:
    arrays = tokens(6, seed)
    arrays["input_ids"][0, 3] = 5000  # the embedding table has 1000 rows
    return arrays


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("queue", ["batched", "unbatched"])
def test_a_token_past_the_vocabulary_is_400_through_the_engine_owner(protocol, queue, request):
    server = request.getfixturevalue(queue)
    with pytest.raises(InferenceServerException) as info:
        _infer(protocol, server, _poisoned(1))
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), info.value
    assert "onnxruntime" not in info.value.message() and "/" not in info.value.message()
    good = tokens(6, 2)  # the pod still serves, on both protocols
    for each in ("rest", "grpc"):
        np.testing.assert_allclose(
            _infer(each, server, good)["sentence_vec"], unpadded(good)["sentence_vec"], atol=1e-4
        )


def test_good_requests_batched_with_a_bad_one_get_their_own_answers(batched):
    """16 good and 2 bad calls at once over both protocols: they share engine calls in the owner
    (30 ms batch delay), the batch is rerun request by request, and only the bad ones fail."""
    calls = [
        ("rest" if i % 2 else "grpc", _poisoned(i) if i in (5, 12) else tokens(6, 100 + i))
        for i in range(18)
    ]

    def one(call):
        protocol, arrays = call
        try:
            return _infer(protocol, batched, arrays)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(one, calls))
    assert "[owner]: model 'enc': batch of" in batched.log()  # a batch held a bad request
    for i, ((_, arrays), answer) in enumerate(zip(calls, answers, strict=True)):
        if i in (5, 12):
            assert isinstance(answer, InferenceServerException), answer
            assert answer.status() in ("400", "StatusCode.INVALID_ARGUMENT"), answer
        else:
            assert not isinstance(answer, Exception), (i, answer)
            np.testing.assert_allclose(
                answer["sentence_vec"], unpadded(arrays)["sentence_vec"], atol=1e-4
            )
