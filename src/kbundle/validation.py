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
        self._shared = tuple(signature.shared_dims().items())

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
        """Every input given exactly once; one pass over the names (a set, never list.count)."""
        seen = unique_names(self.model_name, "input", names)
        missing = next((n for n in self._inputs if n not in seen), None)
        if missing is not None:
            raise InvalidRequest(
                f"model '{self.model_name}': missing input '{missing}' "
                f"(expected {self._inputs[missing].describe()})"
            )

    def check_batch(self, arrays: Mapping[str, np.ndarray]) -> int | None:
        """All batched inputs must agree on the batch size, and inputs sharing a named dim on
        that dim; returns the batch size (None when unbatched)."""
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
        self.check_shared_dims(arrays)
        return next(iter(sizes.values()), None)

    def check_shared_dims(self, arrays: Mapping[str, np.ndarray]) -> None:
        """InvalidRequest naming both tensors, the dim and the sizes when a named dim differs."""
        for dim_name, places in self._shared:
            first: tuple[str, int, int] | None = None
            for tensor, axis in places:
                array = arrays.get(tensor)
                if array is None or array.ndim <= axis:
                    continue
                size = array.shape[axis]
                if first is None:
                    first = (tensor, axis, size)
                elif size != first[2]:
                    raise InvalidRequest(self._disagree(dim_name, first, (tensor, axis, size)))

    def _disagree(self, dim: str, a: tuple[str, int, int], b: tuple[str, int, int]) -> str:
        if a[0] == b[0]:
            return (
                f"model '{self.model_name}' input '{a[0]}': dims {a[1]} and {b[1]} "
                f"disagree on dim '{dim}' ({a[2]} vs {b[2]})"
            )
        return (
            f"model '{self.model_name}' inputs '{a[0]}' and '{b[0]}' disagree on dim "
            f"'{dim}' ({a[2]} vs {b[2]})"
        )

    def check_outputs(self, requested: Iterable[str]) -> None:
        requested = list(requested)
        unique_names(self.model_name, "output", requested)
        for name in requested:
            if name not in self._outputs:
                raise InvalidRequest(
                    f"model '{self.model_name}': unknown output '{name}' "
                    f"(the model's outputs are {sorted(self._outputs)})"
                )


def unique_names(model_name: str, kind: str, names: Iterable[str]) -> set[str]:
    """The names as a set; InvalidRequest naming the first one given twice (one pass)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise duplicate_name(model_name, kind, name)
        seen.add(name)
    return seen


def duplicate_name(model_name: str, kind: str, name: str) -> InvalidRequest:
    where = f"model '{model_name}'" if model_name else "request"
    return InvalidRequest(f"{where}: {kind} '{name}' given more than once")
