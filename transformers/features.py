"""What every feature kind and output step provides, and the input checks they share.

A feature reads the client's named arrays and writes the predictor's named arrays for the whole
request at once; an output step does the reverse. Both are built once from the spec and are
stateless per request, so they may run in worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from kbundle.errors import InvalidRequest
from kbundle.specs import DYNAMIC, TensorSpec


class Feature(Protocol):
    #: Runs CPU-heavy work (image decode, tokenisation): the model moves it off the event loop.
    blocking: bool

    def client_inputs(self) -> list[TensorSpec]:
        """The V2 inputs clients send (for metadata; BYTES [-1] for images and text)."""

    def consumes(self, name: str) -> bool:
        """True when a client input of this name belongs to this feature."""

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The predictor tensors for the whole request; InvalidRequest naming the field on bad input."""


class OutputStep(Protocol):
    def predictor_outputs(self) -> list[str]:
        """The predictor outputs this step reads (asked for explicitly on the hop)."""

    def client_outputs(self) -> list[TensorSpec]:
        """The V2 outputs clients get back (for metadata)."""

    def decode(
        self, outputs: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Client outputs from the predictor's outputs (and the tensors that were sent to it)."""


class BytesFeature:
    """The shared part of a feature fed by one BYTES [N] client input, `name` (images, texts)."""

    name: str
    blocking = True

    def client_inputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.name, "BYTES", (DYNAMIC,))]

    def consumes(self, name: str) -> bool:
        return name == self.name

    def _values(self, inputs: Mapping[str, np.ndarray], what: str) -> tuple[str, np.ndarray]:
        """(where, the input's values), or InvalidRequest naming the input and `what` it takes."""
        where = f"input '{self.name}'"
        return where, bytes_column(where, required(inputs, self.name, what))


def column(where: str, array: np.ndarray) -> np.ndarray:
    """A per-row input as a 1-D array: shape [N] or [N, 1] (the two forms V2 clients send)."""
    if array.ndim == 1:
        return array
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    raise InvalidRequest(
        f"{where}: expected shape [N] or [N, 1] (one value per row), got {list(array.shape)}"
    )


def bytes_column(where: str, array: np.ndarray) -> np.ndarray:
    """A BYTES per-row input (object array of bytes), or InvalidRequest naming the field."""
    if array.dtype != object:
        raise InvalidRequest(f"{where}: expected BYTES, got {array.dtype.name} data")
    return column(where, array)


def texts(where: str, values: np.ndarray) -> list[str]:
    """UTF-8 strings from a BYTES column; a bad byte sequence is the client's error."""
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{where}: not valid UTF-8 text ({exc.reason})") from None


def required(inputs: Mapping[str, np.ndarray], name: str, what: str) -> np.ndarray:
    array = inputs.get(name)
    if array is None:
        raise InvalidRequest(f"input '{name}' is missing ({what})")
    return array
