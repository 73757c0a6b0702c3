"""The REST error answers for FastAPI's routes (metadata, config, health): the one status table.

V2 infer never reaches FastAPI: the middleware in asgi_infer answers it first.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse

from kbundle.errors import KBundleError
from kbundle.serving.core import as_error
from kbundle.serving.status_map import KSERVE_EXCEPTIONS, log_if_internal
from kbundle.status import http_status


async def error_response(request: Request, exc: Exception) -> Response:
    log_if_internal(exc, request.url.path)
    error = as_error(exc)
    return ORJSONResponse(status_code=http_status(error.status), content={"error": error.message})


def register_error_handlers(app: FastAPI) -> None:
    """One mapping for our errors and kserve's (added after kserve's, so ours win)."""
    app.add_exception_handler(KBundleError, error_response)
    for kind in KSERVE_EXCEPTIONS:
        app.add_exception_handler(kind, error_response)
