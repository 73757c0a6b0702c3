"""`kind: tensor`: a client tensor forwarded as is (checked against its declared spec), and a
predictor output returned as is. The minimal transformer, and the one the hop benchmark uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kbundle.errors import ConfigError, InvalidRequest
from kbundle.specs import TensorSpec, numpy_dtype, v2_datatype
from kbundle.transformers.features import required
from kbundle.transformers.spec import Entry


def _shape(entry: Entry) -> tuple[int, ...]:
    shape = entry.require("shape", kind=list)
    if not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
        raise ConfigError(f"{entry.where}: 'shape' must list positive sizes or -1, got {shape!r}")
    return tuple(shape)


class TensorFeature:
    blocking = False

    def __init__(self, spec: TensorSpec, tensor: str):
        self.spec = spec
        self.tensor = tensor

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> TensorFeature:
        name = entry.require("name", kind=str)
        spec = TensorSpec(name, entry.datatype("datatype", "FP32"), _shape(entry))
        return cls(spec, entry.get("tensor", name, kind=str))

    def client_inputs(self) -> list[TensorSpec]:
        return [self.spec]

    def consumes(self, name: str) -> bool:
        return name == self.spec.name

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        array = required(inputs, self.spec.name, f"expected {self.spec.describe()}")
        datatype = v2_datatype(array.dtype)
        if array.dtype != numpy_dtype(self.spec.datatype) or not self.spec.shape_matches(
            array.shape
        ):
            raise InvalidRequest(
                f"input '{self.spec.name}': expected {self.spec.describe()}, got {datatype} {list(array.shape)}"
            )
        return {self.tensor: array}


class TensorOutput:
    def __init__(self, tensor: str, name: str, datatype: str | None):
        self.tensor, self.name, self.datatype = tensor, name, datatype

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> TensorOutput:
        tensor = entry.require("tensor", kind=str)
        datatype = entry.datatype("datatype", "BYTES") if "datatype" in entry.data else None
        return cls(tensor, entry.get("name", tensor, kind=str), datatype)

    def predictor_outputs(self) -> list[str]:
        return [self.tensor]

    def client_outputs(self) -> list[TensorSpec]:
        # The predictor decides the shape; metadata says what the spec promises.
        return [TensorSpec(self.name, self.datatype or "FP32", (-1,))]

    def decode(
        self, outputs: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        array = outputs[self.tensor]
        if self.datatype is not None and self.datatype != "BYTES":
            array = array.astype(numpy_dtype(self.datatype), copy=False)
        return {self.name: array}
