"""Our V2 REST infer route, mounted ahead of kserve's on the same app and port."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse
from kserve.protocol.dataplane import DataPlane

from kbundle.errors import KbundleError, ModelNotFoundError, ModelUnavailable
from kbundle.serving import v2_rest
from kbundle.serving.arrays import ArrayModel
from kbundle.serving.kserve_bridge import infer_via_dataplane
from kbundle.serving.status_map import KSERVE_EXCEPTIONS, classify

logger = logging.getLogger("kbundle.rest")


def register_infer_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """Register POST /v2/models/{name}[/versions/{v}]/infer; must run before kserve adds its own."""

    async def infer(request: Request, model_name: str) -> Response:
        model = dataplane.model_registry.get_model(model_name)
        if model is None:
            raise ModelNotFoundError(f"model '{model_name}' is not served here")
        if not model.ready:
            raise ModelUnavailable(f"model '{model_name}' is not ready")
        validator = model.validator if isinstance(model, ArrayModel) else None
        body = await request.body()
        array_request = v2_rest.decode_request(
            body, request.headers.get(v2_rest.HEADER_LENGTH), validator, request.headers
        )
        if isinstance(model, ArrayModel):
            array_response = await model.infer_arrays(array_request)
        else:
            array_response = await infer_via_dataplane(dataplane, model_name, array_request)
        content, headers = v2_rest.encode_response(model_name, array_request, array_response)
        return Response(content=content, headers=headers)

    async def infer_version(request: Request, model_name: str, model_version: str) -> Response:
        return await infer(request, model_name)

    app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"])
    app.add_api_route(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        infer_version,
        methods=["POST"],
        include_in_schema=False,
    )


async def error_response(request: Request, exc: Exception) -> Response:
    status, _, message = classify(exc)
    if status >= 500 and not isinstance(exc, KbundleError):
        logger.error("internal error on %s", request.url.path, exc_info=exc)
    return ORJSONResponse(status_code=int(status), content={"error": message})


def register_error_handlers(app: FastAPI) -> None:
    """One mapping for our errors and kserve's (added after kserve's, so ours win)."""
    app.add_exception_handler(KbundleError, error_response)
    for kind in KSERVE_EXCEPTIONS:
        app.add_exception_handler(kind, error_response)
