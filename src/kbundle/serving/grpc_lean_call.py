"""One unary call of the lean gRPC server: its headers, its one message, and the parts of
grpc.ServicerContext that handlers use (metadata, deadline, cancel callbacks, abort)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from kbundle.serving import h2_frames as h2

if TYPE_CHECKING:
    from kbundle.serving.core import Admitted
    from kbundle.serving.grpc_lean_conn import H2Connection

Refusal = tuple[int, str, bytes]  # gRPC code, message, extra trailer fields
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
ENCODINGS = (b"identity", b"gzip", b"deflate")
ACCEPT_ENCODING = h2.literal(b"grpc-accept-encoding", b",".join(ENCODINGS))
# Reserved by HTTP/2 or gRPC itself: not handed to handlers as invocation metadata.
RESERVED = {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}


class AbortError(Exception):
    """What `Call.abort` raises: the handler ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class Call:
    def __init__(self, conn: H2Connection, stream: int, headers: list, send_window: int):
        self.conn, self.stream, self.send_window = conn, stream, send_window
        self.started = time.monotonic()  # a body slower than body_timeout_s is refused
        self.header_count = len(headers)
        self.path = self.content_type = self.encoding = self.method = b""
        self.deadline: float | None = None
        self.metadata: list[tuple[str, str | bytes]] = []
        self._read_headers(headers)
        self.body = bytearray()
        self.message = b""
        self.request_complete = self.answered = self.cancelled = False
        self.pending: memoryview | None = None  # answer bytes waiting for flow-control window
        self.task: asyncio.Task | None = None
        self.admitted: Admitted | None = None  # its place in the model's queue (request core)
        self.timer: asyncio.TimerHandle | None = None  # the deadline's
        self._callbacks: list[Callable[[], object]] = []

    def _read_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":path":
                self.path = value
            elif name == b":method":
                self.method = value
            elif name == b"content-type":
                self.content_type = value
            elif name == b"grpc-encoding":
                self.encoding = value
            elif name == b"grpc-timeout":
                seconds = h2.grpc_timeout_s(value)
                self.deadline = None if seconds is None else time.monotonic() + seconds
            elif not name.startswith(b":") and name not in RESERVED:
                self.metadata.append(_metadata(name, value))

    def header_problem(self) -> Refusal | None:
        if self.method != b"POST":
            return INTERNAL, f"gRPC calls are POST, not {self.method.decode('latin-1')}", b""
        if not self.content_type.startswith(b"application/grpc"):
            return INTERNAL, "content-type must be application/grpc", b""
        if self.encoding not in (b"", *ENCODINGS):
            name = self.encoding.decode("latin-1")
            return UNIMPLEMENTED, f"grpc-encoding {name} is not supported", ACCEPT_ENCODING
        return None

    # -- the request message -----------------------------------------------------------------------
    def add_body(self, chunk: bytes, limit: int) -> Refusal | None:
        self.body += chunk
        if len(self.body) >= 5:
            size = h2.MESSAGE_PREFIX.unpack_from(self.body)[1]
            if size > limit:
                return too_large(size, limit)
            if len(self.body) > 5 + size:
                return INTERNAL, "a unary call carries exactly one message", b""
        return None

    def finish_body(self, limit: int) -> Refusal | None:
        """The client ended its side: the message is whole (or the call is malformed)."""
        self.request_complete = True
        if len(self.body) < 5:
            return INTERNAL, "the call ended without its request message", b""
        compressed, size = h2.MESSAGE_PREFIX.unpack_from(self.body)
        if len(self.body) != 5 + size:
            return INTERNAL, "the request message is incomplete", b""
        message = bytes(memoryview(self.body)[5:])
        self.body = bytearray()
        if not compressed:
            self.message = message
            return None
        return self._decompress(message, limit)

    def _decompress(self, message: bytes, limit: int) -> Refusal | None:
        if self.encoding in (b"", b"identity"):
            return INTERNAL, "compressed message without grpc-encoding", b""
        wbits = 31 if self.encoding == b"gzip" else 15
        inflater = zlib.decompressobj(wbits)
        try:  # bounded: a small compressed body must not become an unbounded one
            self.message = inflater.decompress(message, limit + 1)
        except zlib.error:
            return INTERNAL, f"the message is not valid {self.encoding.decode()} data", b""
        if len(self.message) > limit or inflater.unconsumed_tail:
            return too_large(limit + 1, limit)
        return None

    # -- grpc.ServicerContext, the parts handlers use ----------------------------------------------
    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def is_active(self) -> bool:
        return not (self.answered or self.cancelled)

    def gone(self) -> bool:
        """The client cancelled or the deadline passed: nobody reads the answer any more."""
        remaining = self.time_remaining()
        return self.cancelled or (remaining is not None and remaining <= 0)

    def add_callback(self, callback: Callable[[], object]) -> bool:
        """Always calls back: at once when the client already left (the request core then
        drops the call instead of running it for nobody)."""
        if self.cancelled:
            callback()
        else:
            self._callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortError(code, details)

    def peer(self) -> str:
        peer = self.conn.transport.get_extra_info("peername") if self.conn.transport else None
        return f"ipv4:{peer[0]}:{peer[1]}" if peer else "unknown"

    def set_code(self, code: Any) -> None:
        """Accepted for compatibility; handlers here end calls by raising or aborting."""

    def set_details(self, details: str) -> None:
        """Accepted for compatibility (see set_code)."""

    def cancel_by_client(self) -> None:
        """RST_STREAM or a lost connection: run the cancel callbacks and stop the handler."""
        if self.cancelled or self.answered:
            return
        self.cancelled = True
        for callback in self._callbacks:
            callback()
        if self.task is not None:
            self.task.cancel()


def too_large(size: int, limit: int) -> Refusal:
    message = (
        f"received message larger than max ({size} vs. {limit}): raise max_request_bytes "
        "(KBUNDLE_MAX_REQUEST_BYTES) to accept it"
    )
    return RESOURCE_EXHAUSTED, message, b""


def _metadata(name: bytes, value: bytes) -> tuple[str, str | bytes]:
    key = name.decode("latin-1")
    if key.endswith("-bin"):  # binary metadata travels base64, unpadded
        try:
            return key, base64.b64decode(value + b"=" * (-len(value) % 4))
        except binascii.Error:
            return key, value  # not base64: handed on as sent, never a dropped connection
    return key, value.decode("latin-1")
