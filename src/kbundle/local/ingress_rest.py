"""The REST ingress: one port for the InferenceService's V2 REST API, split across revisions.

A plain ASGI app (served by uvicorn) forwarding each request whole to the revision `pick()`
chose, through one pooled aiohttp client (about 1 ms less per call than httpx here), bodies
passed as bytes untouched (no decompression, no added Content-Type). The answer carries `x-kbundle-revision`. A revision that
is scaled to zero is started first (the activator); one that cannot be reached is a 503 with
the reason, a timeout a 504. `GET /kbundle/status[?window=S]` is the runner's own status.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

import aiohttp
import orjson

from kbundle.errors import KbundleError, ModelUnavailable, UpstreamTimeout
from kbundle.local.scrape import METRICS_PATH, metrics_text
from kbundle.local.service import LocalService
from kbundle.retry import RetryExhausted, RetryPolicy, retry_async
from kbundle.serving.limits import TIMEOUT_HEADER, request_deadline

TIMEOUT_HEADER_B = TIMEOUT_HEADER.encode()

REVISION_HEADER = "x-kbundle-revision"
TAG_HEADER_B = (
    b"x-kbundle-tag"  # pin a request: latest, prev, a Standard target, or a revision name
)
STATUS_PATH = "/kbundle/status"
# Hop-by-hop headers (RFC 9110 §7.6.1) and the length, which each hop sets itself.
_DROP = {
    b"host",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"content-length",
}
# A pooled connection found dead before any answer: tried once more, at once.
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_STALE_RETRY = RetryPolicy(attempts=2, first_delay_s=0.0)
# aiohttp adds these when absent; a proxy must send the client's request as it came.
_NO_AUTO_HEADERS = ("Content-Type", "User-Agent", "Accept-Encoding", "Accept")


class RestIngress:
    def __init__(self, service: LocalService, timeout_s: float = 600.0):
        self.service = service
        self.client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0),
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        await self.client.close()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == STATUS_PATH:
            query = parse_qs(scope.get("query_string", b"").decode())
            window = float(query["window"][0]) if "window" in query else None
            await _respond(
                send,
                200,
                orjson.dumps(await self.service.status(window)),
                [(b"content-type", b"application/json")],
            )
            return
        if scope["path"] == METRICS_PATH:  # the queue-proxy's per-revision metrics
            text = metrics_text(self.service).encode()
            await _respond(send, 200, text, [(b"content-type", b"text/plain; version=0.0.4")])
            return
        try:
            deadline = _deadline(scope)  # from arrival: the client's budget covers this hop too
            body = await _read_body(receive)
            runtime = self.service.pick(self._tag(scope))
        except KbundleError as exc:
            await _error(send, exc, [])
            return
        tag = [(REVISION_HEADER.encode(), runtime.name.encode())]
        started = time.perf_counter()
        status = 500
        async with runtime.track():
            try:
                await runtime.activate()
                status, headers, content = await self._forward(
                    scope, body, runtime.rest_base, deadline
                )
                await _respond(send, status, content, headers + tag)
            except KbundleError as exc:
                status = int(exc.http_status)
                await _error(send, exc, tag)
            finally:
                runtime.stats.record(time.perf_counter() - started, status >= 500)

    def _tag(self, scope: dict) -> str | None:
        """The explicit `x-kbundle-tag` header first, then a `latest-`/`prev-` Host (tag routing)."""
        headers = dict(scope["headers"])
        if TAG_HEADER_B in headers:
            return headers[TAG_HEADER_B].decode("latin-1")
        return self.service.tag_from_host(headers.get(b"host", b"").decode("latin-1"))

    async def _forward(
        self, scope: dict, body: bytes, base: str, deadline: float | None
    ) -> tuple[int, list, bytes]:
        """One retry when a pooled connection turns out dead before any answer (a component that
        restarted on the same port): inference has no side effects, so sending twice is safe."""
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in _DROP
        ]
        timeout = None
        if deadline is not None:  # what is left of the client's budget goes to the revision
            left = max(deadline - time.monotonic(), 0.001)
            headers = [(k, v) for k, v in headers if k.lower() != TIMEOUT_HEADER]
            headers.append((TIMEOUT_HEADER, f"{left * 1000:.0f}"))
            timeout = aiohttp.ClientTimeout(total=left, sock_connect=5.0)
        query = scope.get("query_string") or b""
        url = base + scope["path"] + (("?" + query.decode()) if query else "")

        async def send() -> tuple[int, list, bytes]:
            async with self.client.request(
                scope["method"],
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout or self.client.timeout,
            ) as resp:
                content = await resp.read()
                out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _DROP]
                return resp.status, out, content

        try:
            return await retry_async(send, _STALE_RETRY, lambda e: isinstance(e, _STALE))
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"{base}: no answer in time") from exc
        except RetryExhausted as exc:
            raise ModelUnavailable(f"upstream {base} unreachable: {exc.last}") from exc.last
        except aiohttp.ClientError as exc:
            raise ModelUnavailable(f"upstream {base} unreachable: {exc}") from exc


def _deadline(scope: dict) -> float | None:
    for key, value in scope["headers"]:
        if key == TIMEOUT_HEADER_B:
            return request_deadline({}, {TIMEOUT_HEADER: value.decode("latin-1")})
    return None


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send, exc: KbundleError, headers: list) -> None:
    body = orjson.dumps({"error": exc.message})
    await _respond(
        send, int(exc.http_status), body, [(b"content-type", b"application/json"), *headers]
    )
