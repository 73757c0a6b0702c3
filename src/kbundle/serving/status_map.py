"""Which `Status` an exception raised while serving stands for (codes come from kbundle.status).

kserve's own exceptions are classified here too, so the same fault never gets a different answer
on REST and gRPC (kserve 0.21 sends InferenceError as REST 500 but gRPC INVALID_ARGUMENT, and
crashes with AttributeError on ModelNotReady/NotImplementedError over gRPC).
"""

from __future__ import annotations

import concurrent.futures
import logging

from kserve import errors as kserve_errors

from kbundle.errors import KBundleError, Status

logger = logging.getLogger("kbundle.serving")

_KSERVE_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (kserve_errors.InvalidInput, Status.INVALID_ARGUMENT),
    (kserve_errors.ModelNotFound, Status.NOT_FOUND),
    (kserve_errors.ModelNotReady, Status.UNAVAILABLE),
    (kserve_errors.ServerNotReady, Status.UNAVAILABLE),
    (kserve_errors.ServerNotLive, Status.UNAVAILABLE),
    (kserve_errors.UnsupportedProtocol, Status.UNIMPLEMENTED),
    (NotImplementedError, Status.UNIMPLEMENTED),
    (kserve_errors.InferenceError, Status.INTERNAL),
    (concurrent.futures.CancelledError, Status.CANCELLED),
)

KSERVE_EXCEPTIONS = tuple(row[0] for row in _KSERVE_TABLE)


def classify(exc: BaseException) -> tuple[Status, str]:
    """The status and the client-safe message for an exception."""
    if isinstance(exc, KBundleError):
        return exc.status, exc.message
    for kind, status in _KSERVE_TABLE:
        if isinstance(exc, kind):
            return status, str(exc) or kind.__name__
    # Unknown faults: no internals leak to the client; the server log has the traceback.
    return Status.INTERNAL, "internal server error"


def log_if_internal(exc: BaseException, where: str) -> None:
    """Unexpected faults are logged once, with their traceback; client faults and cancels never."""
    if not isinstance(exc, KBundleError) and classify(exc)[0] is Status.INTERNAL:
        logger.error("internal error in %s", where, exc_info=exc)
