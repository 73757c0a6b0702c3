"""Engine faults: the client's (400) or the server's (500), told apart once, for every engine.

An engine can still refuse a request that passed validation: shapes it cannot combine (an ORT
Reshape or broadcast, a Torch size mismatch, a TensorRT shape check), an index past an
embedding's end, an empty batch. Those are the client's to fix and answer 400 with a short
message of ours; anything else is 500. The engine's own text (source paths, stack, node names)
goes to the log with the request id, never into the response.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from kbundle.errors import EngineError, InvalidRequest, KbundleError

logger = logging.getLogger("kbundle.engine.faults")

# Words the engines use when a request's shapes or values, not the server, are at fault.
CLIENT_WORDS = (
    "invalid_argument",
    "invalidargument",
    "shape",
    "broadcast",
    "dimension",
    "out of bounds",
    "out of range",
    "indices element",
    "size of tensor",
    "must match the size",
    "expected input at",
    "mat1 and mat2",
)
CLIENT_TYPES = ("InvalidArgument", "IndexError")


def is_client_fault(exc: BaseException, inputs: Mapping[str, np.ndarray]) -> bool:
    """True when the request caused the failure: empty inputs, or the engine says so in words."""
    if any(0 in np.shape(array) for array in inputs.values()):
        return True
    if type(exc).__name__ in CLIENT_TYPES:
        return True
    text = str(exc).lower()
    return any(word in text for word in CLIENT_WORDS)


def engine_fault(
    model_name: str,
    exc: BaseException,
    inputs: Mapping[str, np.ndarray],
    request_id: str = "",
) -> KbundleError:
    """The error the client gets for an engine failure; the engine's own text goes to the log."""
    if isinstance(exc, KbundleError):
        return exc
    ref = f"request id {request_id}" if request_id else "no request id"
    if is_client_fault(exc, inputs):
        logger.warning(
            "model '%s' (%s): engine refused the request: %s", model_name, ref, _one_line(exc)
        )
        error: KbundleError = InvalidRequest(
            f"model '{model_name}': the engine cannot run this request's shapes or values "
            f"({describe(inputs)}); see the server log for {ref}"
        )
    else:
        logger.error("model '%s' (%s): engine failure", model_name, ref, exc_info=exc)
        error = EngineError(
            f"model '{model_name}': internal engine error; see the server log for {ref}"
        )
    error.__cause__ = exc if isinstance(exc, Exception) else None
    return error


def describe(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(np.shape(a))}" for name, a in inputs.items())


def _one_line(exc: BaseException) -> str:
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
