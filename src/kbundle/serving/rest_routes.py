"""The REST error answers for FastAPI's routes (metadata, config, health): the one status table.

V2 infer never reaches FastAPI: the HTTP protocol in rest_lean answers it first.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from kbundle.errors import KBundleError
from kbundle.serving.core import as_error
from kbundle.serving.status_map import KSERVE_EXCEPTIONS, log_if_internal
from kbundle.status import http_status


def json_response(content: Any, status_code: int = 200) -> Response:
    """JSON bytes from orjson (FastAPI's ORJSONResponse is deprecated and warns on every use)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


async def error_response(request: Request, exc: Exception) -> Response:
    log_if_internal(exc, request.url.path)
    error = as_error(exc)
    return json_response({"error": error.message}, http_status(error.status))


def register_error_handlers(app: FastAPI) -> None:
    """One mapping for our errors and kserve's (added after kserve's, so ours win)."""
    app.add_exception_handler(KBundleError, error_response)
    for kind in KSERVE_EXCEPTIONS:
        app.add_exception_handler(kind, error_response)
