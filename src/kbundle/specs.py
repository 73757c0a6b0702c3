"""Frozen tensor specs: the one description of an engine's inputs and outputs.

Metadata, request validation, the model-config extension and output checks all read
these, so a signature is taken once from the engine and never edited afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# V2 (Open Inference Protocol) datatype <-> numpy dtype. BYTES is carried as object arrays of bytes.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_V2[np.dtype("S")] = "BYTES"

DYNAMIC = -1


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a V2 datatype name; KeyError for names the protocol lacks."""
    return V2_TO_NUMPY[datatype.upper()]


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name for a numpy dtype (strings and bytes arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    return NUMPY_TO_V2[dtype]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: V2 datatype and shape, with -1 for every dynamic dimension.

    `dim_names` keeps the engine's name for each dim where it has one (ONNX `dim_param`,
    torch.export symbols, names given to `kbundle export`); None elsewhere, () when none at
    all. Inputs sharing a name must agree on that dim. Metadata never shows names (V2 wants -1).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.datatype)

    @property
    def has_dynamic_batch(self) -> bool:
        return len(self.shape) > 0 and self.shape[0] == DYNAMIC

    def shape_matches(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want == DYNAMIC or want == got for want, got in zip(self.shape, shape, strict=True)
        )

    def to_metadata(self) -> dict:
        """The V2 metadata form: {"name", "datatype", "shape"}."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"

    def dim_name(self, axis: int) -> str | None:
        return self.dim_names[axis] if axis < len(self.dim_names) else None

    def named(self, dim_names: Sequence[str | None]) -> TensorSpec:
        """This spec with `dim_names` (a name only where the dim is dynamic)."""
        names = tuple(
            n if d == DYNAMIC else None for n, d in zip(dim_names, self.shape, strict=False)
        )
        return TensorSpec(self.name, self.datatype, self.shape, names if any(names) else ())


@dataclass(frozen=True)
class Signature:
    """An engine's frozen inputs and outputs, in the engine's own order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec]) -> Signature:
        return cls(tuple(inputs), tuple(outputs))

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def shared_dims(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Each dim name used more than once across the inputs -> its (input, axis) places."""
        places: dict[str, list[tuple[str, int]]] = {}
        for spec in self.inputs:
            for axis, dim_name in enumerate(spec.dim_names):
                if dim_name:
                    places.setdefault(dim_name, []).append((spec.name, axis))
        return {n: tuple(p) for n, p in places.items() if len(p) > 1}

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic leading (batch) dimension."""
        return all(spec.has_dynamic_batch for spec in self.inputs + self.outputs)
