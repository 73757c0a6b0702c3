"""The one table from exceptions to HTTP status and gRPC code, used by both transports.

kserve's own exceptions are mapped here too, so the same fault never gets a different answer on
REST and gRPC (kserve 0.21 sends InferenceError as REST 500 but gRPC INVALID_ARGUMENT, and
crashes with AttributeError on ModelNotReady/NotImplementedError over gRPC).
"""

from __future__ import annotations

from http import HTTPStatus

import grpc
from kserve import errors as kserve_errors

from kbundle.errors import KbundleError

_KSERVE_TABLE: tuple[tuple[type[BaseException], HTTPStatus, grpc.StatusCode], ...] = (
    (kserve_errors.InvalidInput, HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
    (kserve_errors.ModelNotFound, HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    (kserve_errors.ModelNotReady, HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    (kserve_errors.ServerNotReady, HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    (kserve_errors.ServerNotLive, HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    (kserve_errors.UnsupportedProtocol, HTTPStatus.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
    (NotImplementedError, HTTPStatus.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
    (kserve_errors.InferenceError, HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL),
)

KSERVE_EXCEPTIONS = tuple(row[0] for row in _KSERVE_TABLE)


def classify(exc: BaseException) -> tuple[HTTPStatus, grpc.StatusCode, str]:
    """HTTP status, gRPC code and the client-safe message for an exception."""
    if isinstance(exc, KbundleError):
        return exc.http_status, exc.grpc_code, exc.message
    for kind, http_status, grpc_code in _KSERVE_TABLE:
        if isinstance(exc, kind):
            return http_status, grpc_code, str(exc) or kind.__name__
    # Unknown faults: no internals leak to the client; the server log has the traceback.
    return HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL, "internal server error"
