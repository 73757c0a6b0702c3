"""The V2 REST infer route as a bare ASGI middleware, in front of FastAPI: a thin adapter.

`POST /v2/models/{m}[/versions/{v}]/infer` is the only hot route; FastAPI's routing, request
object, dependency solving and kserve's timing middleware cost more than our whole codec on a
small model. This asks the request core (kbundle.serving.core) whether the model's queue has
room before it reads the body (a full queue is a 429 that costs no body: uvicorn skips the unread
rest and the connection stays usable), reads the body, hands the core a decoder and an encoder,
and writes the answer; every other request goes to the app unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from kbundle.errors import InvalidRequest, KBundleError
from kbundle.serving import http_guard, limits, v2_rest
from kbundle.serving.core import CallContext, RequestCore
from kbundle.status import http_status

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
PREFIX = "/v2/models/"
SUFFIX = "/infer"
# A REST call that reaches the core after the drain began is new: refused (503).
REST = CallContext(protocol="rest", refuse_when_draining=True)


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
    """ASGI middleware: serves V2 infer through the request core, passes everything else on."""

    def __init__(self, app: ASGIApp, core: RequestCore):
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        name = infer_model_name(scope["path"])
        if name is None:
            return await self.app(scope, receive, send)
        try:
            self.core.refuse_if_full(name, REST)  # a full queue: 429 before the body is read
            body = await _read_body(receive)
            decode = _decoder(scope, body)
            infer = self.core.infer(name, decode, REST, v2_rest.encode_response)
            content, headers = await http_guard.until_disconnect(receive, infer)
            status = 200
        except KBundleError as exc:
            status = http_status(exc.status)
            content = orjson.dumps({"error": exc.message})
            headers = {"content-type": "application/json", **http_guard.error_headers(exc)}
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


def _decoder(scope: Scope, body: bytes) -> Callable:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

    def decode(validator):
        request = v2_rest.decode_request(
            body, headers.get(v2_rest.HEADER_LENGTH), validator, headers
        )
        request.deadline = limits.request_deadline(request.parameters, headers)
        return request

    return decode


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
