"""Predictor + transformer through `kbundle up` (needs the transformer module from its own issue).

Skipped where `python -m kbundle.transformers` is not installed. What is checked does not depend on
the transformer's feature spec: both components come up with the controller's args, the ingress
routes to the transformer, and its readiness/metadata answer through both ingress ports.
"""

from __future__ import annotations

import importlib.util
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from up_harness import up_fixture
from v2_json import base64_input

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kbundle.transformers.__main__") is None,
    reason="kbundle.transformers has no __main__ on this branch (the transformer issue adds it)",
)


up = up_fixture("digits-transformer.yaml", "up-transformer")


def test_both_components_run_and_the_ingress_reaches_the_transformer(up):
    [revision] = up.status()["revisions"]
    labels = [c["label"] for c in revision["components"]]
    assert labels == ["digits-00001/predictor", "digits-00001/transformer"]
    assert all(c["ready"] for c in revision["components"])
    transformer_log = Path(revision["components"][1]["log"]).read_text()
    assert transformer_log  # it ran and logged
    http = httpclient.InferenceServerClient(up.rest_url)
    assert http.is_model_ready("digits")
    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    assert grpc.is_model_ready("digits")


def test_png_digits_get_the_right_labels_through_the_transformer(up):
    """The sample transformer spec (digits-transformer/v1): 8x8 PNG bytes in, labels out."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for image in digits.images[:8]:
        buffer = io.BytesIO()
        Image.fromarray((image * 255 / 16).astype(np.uint8), "L").save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("image", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(np.array(pngs, dtype=object))
    result = grpc.infer("digits", [tensor])
    assert (result.as_numpy("label") == digits.target[:8]).mean() >= 0.75
    body = {"inputs": [base64_input("image", pngs)]}
    request = urllib.request.Request(
        f"http://{up.rest_url}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.headers["x-kbundle-revision"] == "digits-00001"
        outputs = {o["name"]: o["data"] for o in json.loads(resp.read())["outputs"]}
    assert outputs["label"] == result.as_numpy("label").tolist()
