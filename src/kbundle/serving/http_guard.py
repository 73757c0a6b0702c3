"""HTTP limits uvicorn lacks, for the predictor, the transformer and the `kbundle up` ingress.

- `GuardedHttpTools` (uvicorn's httptools protocol plus limits): request head over
  `max_header_bytes` or `max_headers` -> 431 and close, counted as bytes arrive (the parser never
  holds more than the limit plus one read); a head not complete within `header_timeout_s` of the
  connection opening or the request's first byte -> closed (slowloris); a body not complete
  within `body_timeout_s` of its head -> closed. Idle keep-alive connections close after
  uvicorn's `timeout_keep_alive`; connections over `max_connections` get uvicorn's 503.
- `BodyLimit` (ASGI middleware): a Content-Length over `max_request_bytes` -> 413 before a byte
  of body is read; without one, the body is counted as it streams and refused on the chunk that
  crosses the limit, with `connection: close` so the rest is never read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kbundle.errors import PayloadTooLarge
from kbundle.serving.limits import TRIM_AFTER_BYTES, HttpLimits, trim_after

_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


class GuardedHttpTools(HttpToolsProtocol):
    """Set `limits` on a subclass (`guarded_protocol`); uvicorn builds one per connection."""

    limits: HttpLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_count = 0
        self._head_size = 0
        self._in_head = True
        self._too_large = ""
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.limits.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._expire) if seconds > 0 else None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that sent its request too slowly")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        if not self._too_large:
            super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._too_large = f"request head over {self.limits.max_header_bytes} bytes"
        if self._too_large and not self.transport.is_closing():
            self._send_431(self._too_large)

    def _send_431(self, why: str) -> None:
        body = orjson.dumps({"error": f"{why} (env {self.limits.header_setting(why)})"})
        self.transport.write(
            _431
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_count, self._head_size = True, 0, 0, 0
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_count > self.limits.max_headers:
            self._too_large = f"more than {self.limits.max_headers} request headers"
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_size > self.limits.max_header_bytes:
            self._too_large = f"request head over {self.limits.max_header_bytes} bytes"
        if self._too_large:
            return
        self._arm(self.limits.body_timeout_s)
        self.request_head()

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            self.request_body(body)

    def on_message_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._too_large:
            self.request_end()

    # What a request that passed the limits goes on to: uvicorn's ASGI cycle, unless a subclass
    # serves it itself (kbundle.serving.rest_lean).
    def request_head(self) -> None:
        HttpToolsProtocol.on_headers_complete(self)

    def request_body(self, body: bytes) -> None:
        HttpToolsProtocol.on_body(self, body)

    def request_end(self) -> None:
        HttpToolsProtocol.on_message_complete(self)


P = TypeVar("P", bound=GuardedHttpTools)


def guarded_protocol(limits: HttpLimits, base: type[P] = GuardedHttpTools, **attrs: Any) -> type[P]:
    return type(base.__name__, (base,), {"limits": limits, **attrs})


def apply_to_uvicorn(
    config: uvicorn.Config, limits: HttpLimits, base: type[P] = GuardedHttpTools, **attrs: Any
) -> None:
    """Serve `config` with the guarded protocol (`base`, with `attrs` set on it) and the
    connection cap (before it starts)."""
    config.http = guarded_protocol(limits, base, **attrs)
    config.limit_concurrency = limits.max_connections or None


Receive = Callable[[], Any]


def body_too_large(size: str, limit: int, setting: str = "max_request_bytes") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size} bytes is over the limit of {limit} bytes (setting {setting})"
    )


class BodyLimit:
    """ASGI middleware: refuses bodies over `limit` bytes with 413, never reading them whole."""

    def __init__(self, app: Any, limit: int, setting: str = "max_request_bytes"):
        self.app = app
        self.limit = limit
        self.setting = setting

    def _error(self, size: str) -> PayloadTooLarge:
        return body_too_large(size, self.limit, self.setting)

    async def __call__(self, scope: dict, receive: Receive, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await _refuse(send, self._error(value.decode()))
        seen, refused, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = True
                raise self._error(f"more than {self.limit}")
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused:  # the rest of the body is never read: do not keep the connection
                    message = {
                        **message,
                        "headers": [*message["headers"], (b"connection", b"close")],
                    }
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except PayloadTooLarge as exc:
            if started:
                raise
            await _refuse(send, exc)
        finally:
            if seen >= TRIM_AFTER_BYTES:  # the body's memory is free now: hand it back
                await asyncio.get_running_loop().run_in_executor(None, trim_after, seen)


async def _refuse(send: Callable, exc: PayloadTooLarge) -> None:
    body = orjson.dumps({"error": exc.message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_headers(exc: BaseException) -> dict[str, str]:
    """Extra REST headers of an error: Retry-After (whole seconds) on QueueFull."""
    retry = getattr(exc, "retry_after_s", None)
    return {} if retry is None else {"retry-after": str(max(1, math.ceil(retry)))}
