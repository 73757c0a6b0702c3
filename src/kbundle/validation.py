"""Strict request validation against a frozen signature, shared by every transport.

Checks happen on the tensor *headers* (name, datatype, shape) before any data is decoded, so a
wrong request is refused before it costs a copy. Messages follow one pattern:
"model 'digits' input 'x': expected FP32 [-1, 64], got INT32 [2, 5]".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kbundle.errors import InvalidRequest
from kbundle.specs import Signature, TensorSpec


class SignatureValidator:
    """Validates one model's requests; built once per model, reused for every request."""

    def __init__(self, model_name: str, signature: Signature):
        self.model_name = model_name
        self.signature = signature
        self._inputs = {spec.name: spec for spec in signature.inputs}
        self._outputs = set(signature.output_names)

    def where(self, kind: str, name: str) -> str:
        return f"model '{self.model_name}' {kind} '{name}'"

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> TensorSpec:
        """The input's spec, or InvalidRequest naming what was expected and what arrived."""
        spec = self._inputs.get(name)
        if spec is None:
            raise InvalidRequest(
                f"model '{self.model_name}': unknown input '{name}' "
                f"(the model's inputs are {list(self._inputs)})"
            )
        if datatype != spec.datatype or not spec.shape_matches(shape):
            raise InvalidRequest(
                f"{self.where('input', name)}: expected {spec.describe()}, got {datatype} {list(shape)}"
            )
        return spec

    def check_complete(self, names: Iterable[str]) -> None:
        given = list(names)
        duplicates = sorted({n for n in given if given.count(n) > 1})
        if duplicates:
            raise InvalidRequest(
                f"model '{self.model_name}': input {duplicates[0]!r} given more than once"
            )
        missing = [n for n in self._inputs if n not in given]
        if missing:
            raise InvalidRequest(
                f"model '{self.model_name}': missing input '{missing[0]}' "
                f"(expected {self._inputs[missing[0]].describe()})"
            )

    def check_batch(self, arrays: Mapping[str, np.ndarray]) -> int | None:
        """All batched inputs must agree on the batch size; returns it (None when unbatched)."""
        sizes = {
            name: arrays[name].shape[0]
            for name, spec in self._inputs.items()
            if spec.has_dynamic_batch and name in arrays
        }
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"'{n}' has {b}" for n, b in sizes.items())
            raise InvalidRequest(
                f"model '{self.model_name}': inputs disagree on batch size ({detail})"
            )
        return next(iter(sizes.values()), None)

    def check_outputs(self, requested: Iterable[str]) -> None:
        for name in requested:
            if name not in self._outputs:
                raise InvalidRequest(
                    f"model '{self.model_name}': unknown output '{name}' "
                    f"(the model's outputs are {sorted(self._outputs)})"
                )
