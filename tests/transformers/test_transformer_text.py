"""Text feature end to end: a tokenizer.json built here with the `tokenizers` library (no
downloads) -> input_ids/attention_mask -> a real ONNX model (embedding gather + masked mean pool)
served by the predictor -> L2-normalised sentence embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformer_helpers import bytes_array, start_predictor, start_transformer, write_text_model

CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the quick brown fox jumps over the lazy dog",
    "serving models on kubernetes is fun",
]
MAX_LENGTH = 8
SPEC = f"""\
inputs:
  - kind: text
    name: text
    tokenizer: tokenizer.json
    max_length: {MAX_LENGTH}
    truncation: error
    tensors: {{input_ids: input_ids, attention_mask: attention_mask}}
outputs:
  - {{kind: embedding, tensor: sentence_embedding, name: embedding, normalize: true}}
"""


def build_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    )
    return tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    tokenizer = build_tokenizer()
    table = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 8)).astype(np.float32)
    write_text_model(tmp / "predictor" / "model.onnx", table)
    (tmp / "spec").mkdir()
    tokenizer.save(str(tmp / "spec" / "tokenizer.json"))
    (tmp / "spec" / "transformer.yaml").write_text(SPEC)
    predictor = start_predictor(tmp, "embedder", tmp / "predictor", "predictor")
    try:
        server = start_transformer(
            tmp, "embedder", tmp / "spec", predictor.http_url, "v2", "transformer"
        )
        yield server, tokenizer, table
        server.stop()
    finally:
        predictor.stop()


def _reference(tokenizer: Tokenizer, table: np.ndarray, text: str) -> np.ndarray:
    pooled = table[tokenizer.encode(text).ids].mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def test_texts_come_back_as_pooled_normalised_embeddings(setup):
    server, tokenizer, table = setup
    texts = ["the cat sat", "a lazy dog in the park", "unseen words here"]
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(bytes_array([t.encode() for t in texts]), binary_data=True)
    embeddings = client.infer("embedder", [tensor]).as_numpy("embedding")
    assert embeddings.shape == (3, 8)
    expected = np.stack([_reference(tokenizer, table, t) for t in texts])
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)


def test_over_long_text_is_400_naming_the_field(setup):
    server, _, _ = setup
    long_text = " ".join(["the"] * (MAX_LENGTH + 1))
    body = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["the cat", long_text]}
        ]
    }
    response = requests.post(
        f"http://{server.http_url}/v2/models/embedder/infer", json=body, timeout=30
    )
    assert response.status_code == 400
    message = response.json()["error"]
    assert "input 'text' element 1" in message and f"max_length {MAX_LENGTH}" in message


def test_text_at_max_length_is_accepted(setup):
    server, tokenizer, table = setup
    text = " ".join(["the"] * MAX_LENGTH)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    response = requests.post(
        f"http://{server.http_url}/v2/models/embedder/infer", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        response.json()["outputs"][0]["data"], _reference(tokenizer, table, text), rtol=1e-5
    )
