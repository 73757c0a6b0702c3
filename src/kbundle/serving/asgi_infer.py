"""The V2 REST infer route as a bare ASGI middleware, in front of FastAPI.

`POST /v2/models/{m}[/versions/{v}]/infer` is the only hot route; FastAPI's routing, request
object, dependency solving and kserve's timing middleware cost more than our whole codec on a
small model. This answers that one path directly (same process, port and V2 protocol, same codec
and error table as the FastAPI route it shadows) and hands every other request to the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from kserve.protocol.dataplane import DataPlane

from kbundle.errors import InvalidRequest, KbundleError, ModelNotFoundError, ModelUnavailable
from kbundle.serving import http_guard, limits, v2_rest
from kbundle.serving.arrays import is_array_model
from kbundle.serving.kserve_bridge import infer_via_dataplane
from kbundle.serving.metrics import UNKNOWN_MODEL, count_error, count_request
from kbundle.serving.status_map import classify

logger = logging.getLogger("kbundle.rest")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
PREFIX = "/v2/models/"
SUFFIX = "/infer"


def infer_model_name(path: str) -> str | None:
    """The model name of a V2 infer path, or None for any other path."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    parts = path[len(PREFIX) : -len(SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0]
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0]
    return None


class InferFastPath:
    """ASGI middleware: serves V2 infer for registered models, passes everything else on."""

    def __init__(self, app: ASGIApp, dataplane: DataPlane):
        self.app = app
        self.dataplane = dataplane

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        name = infer_model_name(scope["path"])
        if name is None:
            return await self.app(scope, receive, send)
        model = self.dataplane.model_registry.get_model(name)
        # Unknown names share one label: a client must not be able to grow the label set.
        label = name if model is not None else UNKNOWN_MODEL
        count_request(label, "rest")
        try:
            body = await _read_body(receive)
            content, headers = await self._infer(name, model, scope, body, receive)
            status = 200
        except Exception as exc:
            status_code, _, message = classify(exc)
            status = int(status_code)
            if status >= 500 and not isinstance(exc, KbundleError):
                logger.error("internal error on %s", scope["path"], exc_info=exc)
            count_error(label, "rest", status)
            content = orjson.dumps({"error": message})
            headers = {"content-type": "application/json"}
            headers.update(http_guard.error_headers(exc))
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})

    async def _infer(
        self, name: str, model: Any, scope: Scope, body: bytes, receive: Callable
    ) -> tuple[bytes, dict[str, str]]:
        if model is None:
            raise ModelNotFoundError(f"model '{name}' is not served here")
        if not model.ready:
            raise ModelUnavailable(f"model '{name}' is not ready")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        array_model = is_array_model(model)
        request = v2_rest.decode_request(
            body,
            headers.get(v2_rest.HEADER_LENGTH),
            model.validator if array_model else None,
            headers,
        )
        if array_model:
            request.deadline = limits.request_deadline(request.parameters, headers)
            response = await http_guard.until_disconnect(receive, model.infer_arrays(request))
        else:
            response = await infer_via_dataplane(self.dataplane, name, request)
        return v2_rest.encode_response(name, request, response)


async def _read_body(receive: Callable) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected while sending the body")
        chunks.append(message.get("body", b""))
    return b"".join(chunks)
