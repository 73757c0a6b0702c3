"""The transport-free form of a V2 inference call: named numpy arrays in, named arrays out.

REST and gRPC only translate to and from these; validation, batching and engine calls see
nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from kbundle.specs import Signature
from kbundle.validation import SignatureValidator


@dataclass
class ArrayRequest:
    id: str
    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] | None = None
    parameters: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # REST only: which outputs go back as binary tails (the key "*" holds the request-wide default).
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    # time.monotonic() after which the request is dropped unrun (gRPC deadline, V2 `timeout`).
    deadline: float | None = None
    # Set by the request core: no other request for this model has been read and is still on
    # its way to the queue (known only where the transport admits requests before reading them).
    nothing_behind: bool = False


@dataclass
class ArrayResponse:
    outputs: dict[str, np.ndarray]
    model_version: str = ""
    parameters: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ArrayModel(Protocol):
    """A kserve model that our lean V2 routes may call directly.

    `validator` is None for a model that checks its own inputs (a transformer whose inputs are
    free-form); otherwise every request is checked against it before `infer_arrays` sees it.
    """

    name: str
    ready: bool

    @property
    def validator(self) -> SignatureValidator | None: ...

    @property
    def signature(self) -> Signature | None: ...

    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse: ...


_ARRAY_MODELS: dict[int, tuple[object, bool]] = {}


def is_array_model(model: object) -> bool:
    """isinstance(model, ArrayModel), decided once per model object: a runtime Protocol check
    probes every member (properties included) and would otherwise run on every request."""
    cached = _ARRAY_MODELS.get(id(model))
    if cached is None or cached[0] is not model:
        cached = _ARRAY_MODELS[id(model)] = (model, isinstance(model, ArrayModel))
    return cached[1]


def new_request_id() -> str:
    """A random 128-bit hex id for requests that carry none.

    Not uuid4(): that reads os.urandom per call, a syscall that profiled at ~10% of a tiny
    model's request cost on a busy VM. An id only has to be unique, not unpredictable.
    """
    return f"{random.getrandbits(128):032x}"
