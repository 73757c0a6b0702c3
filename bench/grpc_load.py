"""A lean gRPC load client for the benchmarks: unary calls over cleartext HTTP/2 on asyncio.

Why not grpc.aio: at a few hundred callers on one core its own Python layer is the bottleneck,
so a refusal the server sent in microseconds reached the caller tens of milliseconds later,
as did every answer (bench/results/refusal_latency.md). This client does per call what the
protocol needs and no more: one pre-encoded HPACK header block (literals that never touch a
dynamic table), one DATA frame, and a frame reader that finds the call's status in its trailers
(decoded with `hpack`, as the server's are), with writes made in one iteration sent together.
It reads the server's answer to a deadline rather than timing out locally, so a late
DEADLINE_EXCEEDED shows as late.

Each call is also timed on the wire (`wire_s`): from the write that sent it to the moment the
kernel received the bytes that brought its status (SO_TIMESTAMPNS on the socket, read back with
recvmsg), so neither this client's event loop reaching the read late nor its handling of the
answers ahead in the same read (checking each, sending that caller's next call) is counted as the
server's latency. Where the kernel gives no stamp, the time the read returned stands in.

    conn = await connect("127.0.0.1", 8081, "/inference.GRPCInferenceService/ModelInfer")
    conn.call(request_bytes, timeout_s=0.1, done=lambda status, message, reply, wire_s: ...)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable

import hpack

from kbundle.serving import h2_frames as h2

STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
# done(status name, message, reply message without its 5-byte prefix, seconds from the write that
# sent the call to the read that brought its status; 0 when it was never sent)
Done = Callable[[str, str, bytes, float], None]
NO_ANSWER_GRACE_S = 1.0  # past its deadline with no status: the call is reported NO_ANSWER
RECV_WINDOW = 1 << 24  # per stream (answers are small) and, grown, for the connection
_METHOD_POST, _SCHEME_HTTP = b"\x83", b"\x86"  # static table entries 3 and 6
_PATH, _AUTHORITY, _CONTENT_TYPE = 4, 1, 31  # static table names
SO_TIMESTAMPNS = 35  # Linux (= SCM_TIMESTAMPNS); Python's socket module does not name it
TIMESPEC = struct.Struct("@ll")
READ_BYTES = 1 << 16


class _Call:
    __slots__ = ("done", "headers", "body", "expires", "sent")

    def __init__(self, done: Done, expires: float) -> None:
        self.done, self.expires = done, expires
        self.sent = 0.0  # time.time() of the write that carried it
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()


class Connection(asyncio.Protocol):
    """One HTTP/2 connection; any number of concurrent unary calls on it."""

    def __init__(self, authority: str, path: str) -> None:
        self._base_block = (
            _METHOD_POST
            + _SCHEME_HTTP
            + h2.literal_indexed_name(_PATH, path.encode())
            + h2.literal_indexed_name(_AUTHORITY, authority.encode())
            + h2.literal_indexed_name(_CONTENT_TYPE, b"application/grpc")
            + h2.literal(b"te", b"trailers")
        )
        self._blocks: dict[float | None, bytes] = {}
        self._decoder = hpack.Decoder()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._unsent: list[_Call] = []  # calls in _out, stamped when it is written
        self._received = 0.0  # the kernel's receive time (time.time() clock) of the read parsed
        self._calls: dict[int, _Call] = {}
        self._next_stream = 1
        self._send_window = h2.DEFAULT_WINDOW  # the connection's; requests wait on it in order
        self._peer_stream_window = h2.DEFAULT_WINDOW
        self._waiting: list[tuple[bytes, bytes, int]] = []  # (headers frame, data, stream)
        self._consumed = 0
        self._pending_block: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self.closed: str | None = None
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()

    # -- calls -----------------------------------------------------------------------------
    def call(self, message: bytes, timeout_s: float | None, done: Done) -> None:
        if self.closed is not None:
            done("UNAVAILABLE", self.closed, b"", 0.0)
            return
        block = self._blocks.get(timeout_s)
        if block is None:
            block = self._base_block
            if timeout_s is not None:
                block += h2.literal(b"grpc-timeout", f"{max(1, round(timeout_s * 1e6))}u".encode())
            self._blocks[timeout_s] = block
        data = h2.MESSAGE_PREFIX.pack(0, len(message)) + message
        if len(data) > self._peer_stream_window or len(data) > h2.DEFAULT_MAX_FRAME:
            raise ValueError("this client sends requests of one DATA frame within one window")
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        expires = time.monotonic() + (timeout_s or 3600.0) + NO_ANSWER_GRACE_S
        self._calls[stream] = _Call(done, expires)
        headers = h2.frame(h2.HEADERS, h2.END_HEADERS, stream, block)
        if self._waiting or len(data) > self._send_window:
            self._waiting.append((headers, data, stream))
            return
        self._send_window -= len(data)
        self._send(stream, headers + h2.frame(h2.DATA, h2.END_STREAM, stream, data))

    def expire(self, now: float) -> None:
        """Report calls with no status long past their deadline (the server never answered)."""
        for stream, call in list(self._calls.items()):
            if call.expires < now:
                del self._calls[stream]
                waited = time.time() - call.sent if call.sent else 0.0
                call.done("NO_ANSWER", "no status by the deadline plus 1 s", b"", waited)

    def _send(self, stream: int, frames: bytes) -> None:
        self._unsent.append(self._calls[stream])
        self._write(frames)

    def _write(self, data: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            now = time.time()  # the kernel's receive stamps are on this (realtime) clock
            for call in self._unsent:
                call.sent = now
            self.transport.write(b"".join(self._out))
        self._out.clear()
        self._unsent.clear()

    def _release_waiting(self) -> None:
        while self._waiting and len(self._waiting[0][1]) <= self._send_window:
            headers, data, stream = self._waiting.pop(0)
            self._send_window -= len(data)
            if stream in self._calls:  # not failed meanwhile (GOAWAY, connection lost)
                self._send(stream, headers + h2.frame(h2.DATA, h2.END_STREAM, stream, data))

    # -- the connection --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        settings = {h2.ENABLE_PUSH: 0, h2.INITIAL_WINDOW_SIZE: RECV_WINDOW}
        grow = (1 << 30) - h2.DEFAULT_WINDOW
        transport.write(h2.PREFACE + h2.settings_frame(settings) + h2.window_update(0, grow))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection lost: {exc or 'closed by the server'}")

    def _fail_all(self, why: str) -> None:
        self.closed = self.closed or why
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.done("UNAVAILABLE", why, b"", 0.0)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def data_received(self, data: bytes, received: float | None = None) -> None:
        self._received = received or time.time()
        buf = self._buffer
        buf += data
        offset, size = 0, len(buf)
        while size - offset >= 9:
            high, low, kind, flags, stream = h2.FRAME_HEADER.unpack_from(buf, offset)
            length = (high << 16) | low
            end = offset + 9 + length
            if end > size:
                break
            self._frame(kind, flags, stream & 0x7FFFFFFF, bytes(buf[offset + 9 : end]))
            offset = end
        del buf[:offset]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == h2.DATA:
            call = self._calls.get(stream)
            body = h2.strip_padding(flags, payload, priority=False)
            if call is not None:
                call.body += body
            self._consumed += len(payload)
            if self._consumed >= 1 << 28:
                self._write(h2.window_update(0, self._consumed))
                self._consumed = 0
            if flags & h2.END_STREAM:  # a body with no trailers: not gRPC
                self._finish(stream, "INTERNAL", "stream ended without trailers")
        elif kind in (h2.HEADERS, h2.CONTINUATION):
            if kind == h2.HEADERS:
                block = h2.strip_padding(flags, payload, priority=True)
                self._pending_block = (stream, flags, bytearray(block))
            elif self._pending_block is not None:
                self._pending_block[2].extend(payload)
            if flags & h2.END_HEADERS and self._pending_block is not None:
                first_stream, first_flags, block = self._pending_block
                self._pending_block = None
                self._headers(first_stream, first_flags, bytes(block))
        elif kind == h2.SETTINGS and not flags & h2.ACK:
            values = h2.parse_settings(payload)
            self._peer_stream_window = values.get(h2.INITIAL_WINDOW_SIZE, self._peer_stream_window)
            self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == h2.WINDOW_UPDATE and stream == 0:
            self._send_window += h2.WINDOW.unpack(payload)[0]
            self._release_waiting()
        elif kind == h2.PING and not flags & h2.ACK:
            self._write(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            self._finish(stream, "UNAVAILABLE", f"RST_STREAM {h2.WINDOW.unpack(payload)[0]}")
        elif kind == h2.GOAWAY:
            last = h2.WINDOW.unpack_from(payload)[0] & 0x7FFFFFFF
            self.closed = "GOAWAY"
            for late in [s for s in self._calls if s > last]:
                self._finish(late, "UNAVAILABLE", "GOAWAY: not processed")

    def _headers(self, stream: int, flags: int, block: bytes) -> None:
        fields = self._decoder.decode(block, raw=True)
        call = self._calls.get(stream)
        if call is None:
            return
        call.headers += fields
        if flags & h2.END_STREAM:
            found = dict(call.headers)
            code = found.get(b"grpc-status")
            name = STATUS_NAMES[int(code)] if code and int(code) < len(STATUS_NAMES) else "UNKNOWN"
            message = found.get(b"grpc-message", b"").decode("utf-8", "replace")
            self._finish(stream, name, message)

    def _finish(self, stream: int, status: str, message: str) -> None:
        call = self._calls.pop(stream, None)
        if call is not None:
            wire_s = self._received - call.sent if call.sent else 0.0
            call.done(status, message, bytes(call.body[5:]) if status == "OK" else b"", wire_s)


class StampedSocket:
    """The transport for a Connection: reads with recvmsg to get the kernel's receive stamp of
    each read (asyncio's transports read with recv, which drops it); writes like a transport."""

    def __init__(self, sock: socket.socket, protocol: Connection) -> None:
        self.sock, self.protocol = sock, protocol
        self.loop = asyncio.get_running_loop()
        self._pending = bytearray()  # what the kernel did not take yet
        self._closing = False
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while not self._closing:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(READ_BYTES, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(exc)
                return
            if not data:
                self._lost(None)
                return
            stamp = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = TIMESPEC.unpack(value[: TIMESPEC.size])
                    stamp = seconds + nanos / 1e9
            self.protocol.data_received(data, stamp)

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._pending += data[sent:]
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._pending[:sent]
        if not self._pending:
            self.loop.remove_writer(self.sock.fileno())

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.protocol.connection_lost(exc)


async def connect(host: str, port: int, path: str) -> Connection:
    """An HTTP/2 connection to a gRPC server, once the server's SETTINGS arrived."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    conn = Connection(f"{host}:{port}", path)
    conn.connection_made(StampedSocket(sock, conn))  # type: ignore[arg-type]
    await asyncio.wait_for(conn.ready, 10)
    return conn


async def expire_forever(conns: list[Connection], every_s: float = 0.1) -> None:
    while True:
        await asyncio.sleep(every_s)
        now = time.monotonic()
        for conn in conns:
            conn.expire(now)
