"""The transformer's decode budget bounds memory, not only pixels (issue 12 item 5).

Eight concurrent 39,000,000x1 PNGs (each ~38 KB on the wire, under the 40 M `max_pixels`) used
to take the transformer from ~290 MB to ~1.9 GB. With a decode budget the process stays under
its baseline + budget + 64 MB, and what does not fit is answered 429 (or 400), never a crash.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from proc_mem import peak_mb, reset_peak, rss_mb
from procs import start_module
from tritonclient.utils import InferenceServerException

BUDGET = 320 * 1024 * 1024
SLACK_MB = 64


@pytest.fixture(scope="module")
def long_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (39_000_000, 1), color=7).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def servers(sample_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decode-budget")
    predictor = start_module(
        "kbundle.predictors",
        ["--model_name", "digits", "--model_dir", str(sample_models / "digits" / "v1")],
        tmp / "predictor.log",
        "/v2/models/digits/ready",
    )
    try:
        transformer = start_module(
            "kbundle.transformers",
            [
                "--model_name",
                "digits",
                "--model_dir",
                str(sample_models / "digits-transformer" / "v1"),
                "--predictor_host",
                predictor.grpc_url,
                "--predictor_protocol",
                "grpc-v2",
            ],
            tmp / "transformer.log",
            "/v2/models/digits/ready",
            env={"KBUNDLE_DECODE_BUDGET_BYTES": str(BUDGET), "KBUNDLE_DECODE_WAIT_MS": "200"},
        )
    except Exception:
        predictor.stop()
        raise
    yield transformer
    transformer.stop()
    predictor.stop()


def _send(protocol: str, url: str, data: bytes) -> str:
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url)
    images = np.empty(1, dtype=object)
    images[0] = data
    tensor = module.InferInput("image", [1], "BYTES")
    if module is httpclient:
        tensor.set_data_from_numpy(images, binary_data=True)
    else:
        tensor.set_data_from_numpy(images)
    try:
        client.infer("digits", [tensor])
        return "ok"
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_eight_concurrent_long_pngs_stay_within_the_decode_budget(servers, long_png, protocol):
    pid = servers.proc.pid
    url = servers.grpc_url if protocol == "grpc" else servers.http_url
    _send(protocol, url, long_png)  # warm: first decode allocates Pillow's buffers once
    before = rss_mb(pid)
    reset_peak(pid)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _send(protocol, url, long_png), range(8)))
    grown = peak_mb(pid) - before
    assert grown < BUDGET / 2**20 + SLACK_MB, (grown, answers)
    refused = [a for a in answers if a != "ok"]
    assert "ok" in answers
    for answer in refused:
        assert answer.split()[0] in ("429", "400", "StatusCode.RESOURCE_EXHAUSTED"), answer
        assert "decode budget" in answer
