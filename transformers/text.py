"""Text feature: a `tokenizer.json` (Hugging Face `tokenizers`) -> input_ids, attention_mask
[, token_type_ids] padded or truncated to a declared length; pooled embeddings out.

The whole request is tokenised in one `encode_batch` call (Rust, parallel); padding and
truncation are done by the tokenizer, so the Python side only copies its id lists into arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from kbundle.errors import ConfigError, EngineError, InvalidRequest
from kbundle.specs import DYNAMIC, TensorSpec, numpy_dtype
from kbundle.transformers.features import bytes_column, required, texts
from kbundle.transformers.spec import Entry

TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class TextFeature:
    """`kind: text`: one BYTES input of UTF-8 texts -> the token tensors the engine takes."""

    blocking = True

    def __init__(
        self,
        name: str,
        tokenizer: Tokenizer,
        max_length: int,
        truncation: str,
        padding: str,
        tensors: dict[str, str],
        datatype: str,
    ):
        self.name, self.max_length, self.truncation = name, max_length, truncation
        self.tensors, self.datatype = tensors, datatype
        self.tokenizer = tokenizer
        # Truncate at max_length in any case: an over-long text is then seen as `overflowing`.
        tokenizer.enable_truncation(max_length)
        pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0
        pad_token = tokenizer.padding["pad_token"] if tokenizer.padding else "[PAD]"
        length = max_length if padding == "max_length" else None
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=length)

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> TextFeature:
        path = model_dir / entry.get("tokenizer", "tokenizer.json", kind=str)
        if not path.is_file():
            raise ConfigError(f"{entry.where}: tokenizer file {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises plain Exception
            raise ConfigError(f"{entry.where}: cannot load tokenizer {path}: {exc}") from exc
        tensors = entry.get(
            "tensors", {"input_ids": "input_ids", "attention_mask": "attention_mask"}, kind=dict
        )
        unknown = sorted(set(tensors) - set(TENSOR_KEYS))
        if unknown or "input_ids" not in tensors:
            raise ConfigError(
                f"{entry.where}: 'tensors' maps {list(TENSOR_KEYS)} (input_ids required) to predictor inputs"
            )
        return cls(
            name=entry.get("name", "text", kind=str),
            tokenizer=tokenizer,
            max_length=int(entry.positive("max_length", 128)),
            truncation=entry.choice("truncation", ("error", "truncate"), "error"),
            padding=entry.choice("padding", ("max_length", "longest"), "max_length"),
            tensors={k: str(v) for k, v in tensors.items() if v},
            datatype=entry.datatype("datatype", "INT64"),
        )

    def client_inputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.name, "BYTES", (DYNAMIC,))]

    def consumes(self, name: str) -> bool:
        return name == self.name

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        where = f"input '{self.name}'"
        values = texts(
            where, bytes_column(where, required(inputs, self.name, "UTF-8 texts, BYTES [N]"))
        )
        encodings = self.tokenizer.encode_batch(values)
        if self.truncation == "error":
            over = next((i for i, e in enumerate(encodings) if e.overflowing), None)
            if over is not None:
                raise InvalidRequest(
                    f"{where} element {over}: text is longer than max_length {self.max_length} tokens "
                    "(shorten it, or set truncation: truncate in the transformer spec)"
                )
        dtype = numpy_dtype(self.datatype)
        fields = {
            "input_ids": lambda e: e.ids,
            "attention_mask": lambda e: e.attention_mask,
            "token_type_ids": lambda e: e.type_ids,
        }
        return {
            tensor: np.array([fields[key](e) for e in encodings], dtype=dtype)
            for key, tensor in self.tensors.items()
        }


class PooledEmbedding:
    """`kind: embedding`: a sentence embedding out: the predictor's pooled [N, D] output, or its
    token states [N, L, D] mean/CLS-pooled here with the attention mask that was sent; optionally
    L2-normalised."""

    def __init__(self, tensor: str, name: str, pooling: str, mask: str | None, normalize: bool):
        self.tensor, self.name, self.pooling, self.mask, self.normalize = (
            tensor,
            name,
            pooling,
            mask,
            normalize,
        )

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> PooledEmbedding:
        tensor = entry.require("tensor", kind=str)
        pooling = entry.choice("pooling", ("none", "mean", "cls"), "none")
        mask = entry.get("mask", "attention_mask", kind=str)
        return cls(
            tensor,
            entry.get("name", "embedding", kind=str),
            pooling,
            mask,
            bool(entry.get("normalize", True, kind=bool)),
        )

    def predictor_outputs(self) -> list[str]:
        return [self.tensor]

    def client_outputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.name, "FP32", (DYNAMIC, DYNAMIC))]

    def decode(
        self, outputs: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        states = np.asarray(outputs[self.tensor], dtype=np.float32)
        pooled = pool(states, self.pooling, sent.get(self.mask) if self.mask else None)
        if pooled.ndim != 2:
            raise EngineError(
                f"predictor output '{self.tensor}' is {list(states.shape)}: not an [N, D] embedding"
            )
        if self.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, np.float32(1e-12))
        return {self.name: pooled}


def pool(states: np.ndarray, pooling: str, mask: np.ndarray | None) -> np.ndarray:
    """[N, L, D] token states -> [N, D] (mean over unmasked tokens, or the first token)."""
    if pooling == "none":
        return states
    if states.ndim != 3:
        raise EngineError(
            f"{pooling} pooling needs token states [N, L, D], got {list(states.shape)}"
        )
    if pooling == "cls":
        return states[:, 0]
    weights = np.ones(states.shape[:2], np.float32) if mask is None else mask.astype(np.float32)
    total = np.einsum("nld,nl->nd", states, weights)
    return total / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
