"""V2 REST infer served from uvicorn's HTTP/1.1 protocol itself: no ASGI on the hot path.

`POST /v2/models/{m}[/versions/{v}]/infer` is the only hot route. ASGI's scope, its receive/send
coroutines and FastAPI/Starlette's middleware stack cost more per call than our whole codec on a
small model (bench/results/profile_*_http.txt), so `LeanRestProtocol` reads the request head and
body from the parser's callbacks, hands the request core a decoder and an encoder, and writes the
answer bytes itself. Before any body is read it refuses a Content-Length over `max_request_bytes`
(413, connection closed) and a full queue (429 + Retry-After; the body that follows is skipped and
the connection stays usable). A client that disconnects cancels its call, so a request still
queued in the batcher is dropped unrun. Every other request goes to the ASGI app unchanged.

Kept from uvicorn: keep-alive and its timeout, pipelined requests answered in order (its queue),
the connection cap, graceful shutdown (its task set, `shutdown()`), the Date/Server headers; and
from `GuardedHttpTools` the head/body size limits and timeouts.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from kbundle.errors import KBundleError
from kbundle.serving import limits, v2_rest
from kbundle.serving.core import Admitted, CallContext, RequestCore
from kbundle.serving.http_guard import GuardedHttpTools, body_too_large, error_headers
from kbundle.status import http_status

PREFIX = b"/v2/models/"
SUFFIX = b"/infer"
# A REST call that reaches the core after the drain began is new: refused (503).
REST = CallContext(protocol="rest", refuse_when_draining=True)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON = {"content-type": "application/json"}
_DEFAULT_HEADERS: list = [None, b""]  # (uvicorn's header list, its bytes): shared by connections


def infer_model_name(path: bytes) -> str | None:
    """The model name of a V2 infer path (no query string), or None for any other path."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    parts = path[len(PREFIX) : -len(SUFFIX)].split(b"/")
    if len(parts) == 1 and parts[0]:
        name = parts[0]
    elif len(parts) == 3 and parts[0] and parts[1] == b"versions" and parts[2]:
        name = parts[0]
    else:
        return None
    text = name.decode("latin-1")  # a name no model has is the core's 404, never a crash here
    return urllib.parse.unquote(text) if "%" in text else text


class _NoEvent:
    """uvicorn sets `cycle.message_event` on a lost connection; a lean call is cancelled instead."""

    @staticmethod
    def set() -> None:
        pass


class LeanCycle:
    """One lean infer request, standing in for uvicorn's RequestResponseCycle in the protocol's
    bookkeeping (`response_complete`, `keep_alive`, `disconnected`, `message_event`)."""

    message_event = _NoEvent

    def __init__(self, name: str, path: bytes, headers: list, keep_alive: bool, expect: bool):
        self.name, self.path, self.headers = name, path, headers
        self.keep_alive, self.expect_continue = keep_alive, expect
        self.chunks: list[bytes] = []
        self.size = 0
        self.at_head = self.body_complete = False
        self.response_complete = self.disconnected = False
        self.task: asyncio.Task | None = None
        self.admitted: Admitted | None = None  # its place in the model's queue (request core)
        self.arrived = time.monotonic()  # a timeout counts from here, not from after the decode


class LeanRestProtocol(GuardedHttpTools):
    """Set `core` on a subclass (`http_guard.guarded_protocol(..., core=...)`)."""

    core: RequestCore

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._running: LeanCycle | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            if running.task is not None:
                running.task.cancel()  # the core drops it unrun if it is still queued
            if running.admitted is not None:  # not queued yet: its place is free again
                running.admitted.release()
        super().connection_lost(exc)

    # -- the request, from the parser ------------------------------------------------------------
    def request_head(self) -> None:
        path = self.url.partition(b"?")[0]
        name = infer_model_name(path) if self.parser.get_method() == b"POST" else None
        if name is None or self.parser.should_upgrade() or self._over_connection_cap():
            return super().request_head()
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        previous = self.cycle
        cycle = LeanCycle(name, path, self.headers, keep_alive, self.expect_100_continue)
        self.cycle = cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._at_head(cycle)
        else:  # pipelined: uvicorn's queue starts it (`_start_asgi_task`) once the one before ends
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def request_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, LeanCycle):
            return super().request_body(body)
        if cycle.response_complete:
            return  # answered before its body (a refusal): the rest is skipped
        cycle.size += len(body)
        if cycle.size > self.limits.max_request_bytes:
            limit = self.limits.max_request_bytes
            return self._refuse_and_close(cycle, body_too_large(f"more than {limit}", limit))
        cycle.chunks.append(body)

    def request_end(self) -> None:
        cycle = self.cycle
        if not isinstance(cycle, LeanCycle):
            return super().request_end()
        if cycle.response_complete:
            return
        cycle.body_complete = True
        if cycle.at_head:
            self._start(cycle)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(cycle, LeanCycle):
            return self._at_head(cycle)
        super()._start_asgi_task(cycle, app)

    def _over_connection_cap(self) -> bool:
        """uvicorn's `limit_concurrency`: over it, its ASGI path answers 503."""
        cap = self.limit_concurrency
        return cap is not None and (len(self.connections) >= cap or len(self.tasks) >= cap)

    # -- serving ---------------------------------------------------------------------------------
    def _at_head(self, cycle: LeanCycle) -> None:
        """The request is next to be answered on this connection: refusals that need no body
        first (a declared size over the limit: 413, closed; a full queue: 429, kept open)."""
        cycle.at_head = True
        self._running = cycle
        too_large = self._declared_too_large(cycle)
        if too_large is not None:
            return self._refuse_and_close(cycle, too_large)
        try:
            cycle.admitted = self.core.admit(cycle.name, REST)
        except KBundleError as exc:
            return self._answer(cycle, *error_answer(exc))
        if cycle.body_complete:
            self._start(cycle)
        elif cycle.expect_continue:
            self.transport.write(CONTINUE)

    def _declared_too_large(self, cycle: LeanCycle) -> KBundleError | None:
        limit = self.limits.max_request_bytes
        for key, value in cycle.headers:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                return body_too_large(value.decode(), limit)
        return None

    def _start(self, cycle: LeanCycle) -> None:
        body = b"".join(cycle.chunks)
        cycle.chunks = []
        task = self.loop.create_task(self._serve(cycle, body))
        cycle.task = task
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(self, cycle: LeanCycle, body: bytes) -> None:
        try:
            decode = decoder(body, cycle.headers, cycle.arrived)
            content, headers = await self.core.infer(
                cycle.name, decode, REST, v2_rest.encode_response, cycle.admitted
            )
            answer = 200, content, headers
        except KBundleError as exc:
            answer = error_answer(exc)
        except asyncio.CancelledError:
            if cycle.disconnected:
                return  # the client left; the core counted the call as cancelled
            raise
        self._answer(cycle, *answer)
        if len(body) >= limits.TRIM_AFTER_BYTES:  # the body's memory is free now: hand it back
            del body, decode
            await self.loop.run_in_executor(None, limits.trim_after, limits.TRIM_AFTER_BYTES)

    def _refuse_and_close(self, cycle: LeanCycle, exc: KBundleError) -> None:
        """413: the rest of the body is never read, so the connection cannot be reused."""
        cycle.keep_alive = False
        if cycle.at_head:
            self._answer(cycle, *error_answer(exc))
        else:  # an answer before it is still due: nothing may be written out of order
            cycle.response_complete = True
            self.transport.close()

    def _answer(self, cycle: LeanCycle, status: int, content: bytes, headers: dict) -> None:
        if cycle.response_complete:
            return
        if cycle.admitted is not None:  # refused or failed before it was queued
            cycle.admitted.release()
        cycle.response_complete = True
        if self._running is cycle:
            self._running = None
        if self.transport.is_closing():
            return
        head = [STATUS_LINE[status], self._default_headers()]
        for name, value in headers.items():
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head += (b"content-length: ", str(len(content)).encode(), b"\r\n")
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.writelines((b"".join(head), content))
        if self.access_log:
            self._log_access(cycle, status)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _default_headers(self) -> bytes:
        """uvicorn's Date/Server lines, joined once per second (it swaps the list each tick)."""
        current = self.server_state.default_headers
        cached = _DEFAULT_HEADERS
        if cached[0] is not current:
            joined = b"".join(name + b": " + value + b"\r\n" for name, value in current)
            cached[:] = [current, joined]
        return cached[1]

    def _log_access(self, cycle: LeanCycle, status: int) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        path = cycle.path.decode("latin-1")
        self.access_logger.info('%s - "POST %s HTTP/1.1" %d', client, path, status)


def decoder(
    body: bytes, raw_headers: list[tuple[bytes, bytes]], arrived: float | None = None
) -> Callable:
    """The core's decoder for a REST body: reads it against the model's validator; a timeout
    counts from `arrived` (the request head)."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}

    def decode(validator):
        request = v2_rest.decode_request(
            body, headers.get(v2_rest.HEADER_LENGTH), validator, headers
        )
        request.deadline = limits.request_deadline(request.parameters, headers, arrived)
        return request

    return decode


def error_answer(exc: KBundleError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of an error: the one status table, Retry-After on QueueFull."""
    return (
        http_status(exc.status),
        orjson.dumps({"error": exc.message}),
        {**JSON, **error_headers(exc)},
    )
