"""One client connection of the lean gRPC server: HTTP/2 frames in, unary calls out.

Runs on the serving event loop (asyncio.Protocol): frames are parsed straight from the read
buffer, header blocks go through `hpack` (repeated ones through a cache), a call is handed to
the server (`CallSink`) when its headers arrive (so admission can refuse it before its body is
read) and again when its one message is complete. Answers honour the client's flow-control
windows; everything written in one loop iteration leaves in one `write` (the batcher finishes
many calls at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import hpack

from kbundle.serving import h2_frames as h2
from kbundle.serving.grpc_lean_call import Call
from kbundle.serving.hpack_repeat import RepeatDecoder

logger = logging.getLogger("kbundle.grpc")


class CallSink(Protocol):
    """What a connection needs from its server."""

    max_message_bytes: int
    max_header_bytes: int

    def admit(self, call: Call) -> tuple[int, str, bytes] | None:
        """None to accept the call, or (gRPC code, message, extra trailers) to refuse it now."""

    def dispatch(self, call: Call) -> None:
        """The call's message is complete: run it (the server answers through the call)."""

    def settled(self, call: Call) -> None:
        """The call was answered or cancelled (it may never have been dispatched)."""

    def closed(self, conn: H2Connection) -> None: ...


class H2Connection(asyncio.Protocol):
    # What we tell clients. Streams beyond the cap are refused by HTTP/2 itself (REFUSED_STREAM,
    # which gRPC clients retry); admission (CallSink.admit) refuses far earlier under load.
    MAX_STREAMS = 4096
    LINGER_S = 2.0  # after our FIN, how long a client may take to close its side
    RECV_WINDOW = 4 * 1024 * 1024  # per stream and for the connection: refilled as data arrives
    MAX_FRAME = 1024 * 1024  # fewer frames for large tensors than the 16 KiB default

    def __init__(self, sink: CallSink):
        self.sink = sink
        self.max_header_list = sink.max_header_bytes
        self.opened = time.monotonic()  # a client that never completes its preface is dropped
        self.over_limit = False  # set by the server when this connection is one too many
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self.last_stream = 0
        self.going_away = False
        self._buffer = bytearray()
        self.preface_seen = False
        self.lingering = False  # FIN sent after the last answer; closed when the client closes
        self._decoder = RepeatDecoder(self.max_header_list)
        self._partial: tuple[int, int, bytearray] | None = None  # HEADERS awaiting CONTINUATION
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._refused_in_read = False  # refusals leave at the end of the read, not a turn later
        self._recv_unacked = 0
        self._send_window = h2.DEFAULT_WINDOW
        self._peer_stream_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._blocked: dict[int, Call] = {}  # answers waiting for window (insertion order)

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = {
            h2.MAX_CONCURRENT_STREAMS: self.MAX_STREAMS,
            h2.INITIAL_WINDOW_SIZE: self.RECV_WINDOW,
            h2.MAX_FRAME_SIZE: self.MAX_FRAME,
            h2.MAX_HEADER_LIST_SIZE: self.max_header_list,
            h2.ENABLE_PUSH: 0,
        }
        grow = self.RECV_WINDOW - h2.DEFAULT_WINDOW
        self._send(h2.settings_frame(settings) + h2.window_update(0, grow))

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # our side is done (FIN sent): the rest is only read and dropped
            return
        if self.over_limit:  # closed once its first bytes are read: a FIN, not a reset
            self.close(h2.ENHANCE_YOUR_CALM, "too many connections (KBUNDLE_MAX_CONNECTIONS)")
            return
        self._buffer += data
        try:
            if not self.preface_seen and not self._read_preface():
                return
            self._read_frames()
        except ProtocolError as exc:
            self._fail_connection(exc.code, str(exc))
        self._ack_received()
        if self._refused_in_read:
            self._refused_in_read = False
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for call in list(self.calls.values()):
            call.cancel_by_client()
            self.sink.settled(call)
        self.calls.clear()
        self._blocked.clear()
        self.sink.closed(self)

    # -- reading -----------------------------------------------------------------------------------
    def _read_preface(self) -> bool:
        if len(self._buffer) < len(h2.PREFACE):
            if not h2.PREFACE.startswith(bytes(self._buffer)):
                raise ProtocolError(h2.PROTOCOL_ERROR, "not an HTTP/2 client: this is a gRPC port")
            return False
        if bytes(self._buffer[: len(h2.PREFACE)]) != h2.PREFACE:
            raise ProtocolError(h2.PROTOCOL_ERROR, "not an HTTP/2 client: this is a gRPC port")
        del self._buffer[: len(h2.PREFACE)]
        self.preface_seen = True
        return True

    def _read_frames(self) -> None:
        buffer, pos, end = self._buffer, 0, len(self._buffer)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream = h2.FRAME_HEADER.unpack_from(buffer, pos)
                length = (high << 16) | low
                if length > self.MAX_FRAME:
                    raise ProtocolError(6, f"frame of {length} bytes over {self.MAX_FRAME}")
                if end - pos - 9 < length:
                    break
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream & 0x7FFFFFFF, payload)
        finally:
            del buffer[:pos]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._partial is not None and kind != h2.CONTINUATION:
            raise ProtocolError(h2.PROTOCOL_ERROR, "header block interrupted")
        if kind == h2.DATA:
            self._data(flags, stream, payload)
        elif kind == h2.HEADERS:
            self._headers(flags, stream, h2.strip_padding(flags, payload, priority=True))
        elif kind == h2.CONTINUATION:
            self._continuation(flags, stream, payload)
        elif kind == h2.SETTINGS:
            self._settings(flags, payload)
        elif kind == h2.WINDOW_UPDATE:
            self._window_update(stream, h2.WINDOW.unpack(payload)[0] & h2.MAX_WINDOW)
        elif kind == h2.PING and not flags & h2.ACK:
            self._send(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            call = self.calls.pop(stream, None)
            if call is not None:
                self._blocked.pop(stream, None)
                call.cancel_by_client()
                self.sink.settled(call)
        elif kind == h2.GOAWAY:
            self.going_away = True
            self._close_if_idle()
        # PRIORITY, PING acks and unknown types are ignored, as RFC 9113 allows

    def _headers(self, flags: int, stream: int, block: bytes) -> None:
        if not flags & h2.END_HEADERS:
            self._partial = (stream, flags, bytearray(block))
            return
        self._header_block(flags, stream, block)

    def _continuation(self, flags: int, stream: int, block: bytes) -> None:
        if self._partial is None or self._partial[0] != stream:
            raise ProtocolError(h2.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        self._partial[2].extend(block)
        if len(self._partial[2]) > 4 * self.max_header_list:
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "header block too large")
        if flags & h2.END_HEADERS:
            _, first_flags, whole = self._partial
            self._partial = None
            self._header_block(first_flags, stream, bytes(whole))

    def _header_block(self, flags: int, stream: int, block: bytes) -> None:
        try:  # always decoded: the client's HPACK table must stay in step with ours
            headers = self._decoder.decode(block)
        except hpack.OversizedHeaderListError as exc:
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "header list too large") from exc
        except hpack.HPACKError as exc:
            raise ProtocolError(h2.COMPRESSION_ERROR, "bad header block") from exc
        if stream in self.calls:  # the client's trailers: unary calls carry none that matter
            if flags & h2.END_STREAM:
                self._end_of_request(self.calls[stream])
            return
        if stream % 2 == 0 or stream <= self.last_stream:
            raise ProtocolError(h2.PROTOCOL_ERROR, f"stream {stream} reused or not a client's")
        self.last_stream = stream
        if self.going_away or len(self.calls) >= self.MAX_STREAMS:
            self._send(h2.rst_stream(stream, h2.REFUSED_STREAM))
            return
        call = Call(self, stream, headers, self._peer_stream_window)
        self.calls[stream] = call
        refusal = call.header_problem() or self.sink.admit(call)
        if refusal is not None:
            self.fail(call, *refusal)
            self._refused_in_read = True
        elif flags & h2.END_STREAM:
            self._end_of_request(call)

    def _data(self, flags: int, stream: int, payload: bytes) -> None:
        self._recv_unacked += len(payload)
        call = self.calls.get(stream)
        if call is None or call.answered:  # refused or finished: only the window counts
            return
        body = h2.strip_padding(flags, payload, priority=False) if flags & h2.PADDED else payload
        problem = call.add_body(body, self.sink.max_message_bytes)
        if problem is not None:
            self.fail(call, *problem)
            return
        if not flags & h2.END_STREAM:
            if payload:  # the message is bounded by max_message_bytes: refill as it arrives
                self._send(h2.window_update(stream, len(payload)))
            return
        self._end_of_request(call)

    def _end_of_request(self, call: Call) -> None:
        if call.answered:
            return
        problem = call.finish_body(self.sink.max_message_bytes)
        if problem is not None:
            self.fail(call, *problem)
            return
        self.sink.dispatch(call)

    def _settings(self, flags: int, payload: bytes) -> None:
        if flags & h2.ACK:
            return
        values = h2.parse_settings(payload)
        if h2.INITIAL_WINDOW_SIZE in values:
            delta = values[h2.INITIAL_WINDOW_SIZE] - self._peer_stream_window
            self._peer_stream_window = values[h2.INITIAL_WINDOW_SIZE]
            for call in self.calls.values():
                call.send_window += delta
        self._peer_max_frame = values.get(h2.MAX_FRAME_SIZE, self._peer_max_frame)
        self._send(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._pump_blocked()

    def _window_update(self, stream: int, increment: int) -> None:
        if stream == 0:
            self._send_window += increment
        elif stream in self.calls:
            self.calls[stream].send_window += increment
        self._pump_blocked()

    def _ack_received(self) -> None:
        """Give the connection window back once a quarter of it was used."""
        if self._recv_unacked >= self.RECV_WINDOW // 4 and not self.transport.is_closing():
            self._send(h2.window_update(0, self._recv_unacked))
            self._recv_unacked = 0

    # -- answering -------------------------------------------------------------------------------
    def respond(self, call: Call, message: bytes) -> None:
        """Send a successful unary answer: headers, the message, status 0."""
        if not self._take(call):
            return
        body = h2.MESSAGE_PREFIX.pack(0, len(message)) + message
        self._send(h2.frame(h2.HEADERS, h2.END_HEADERS, call.stream, h2.RESPONSE_HEADERS))
        call.pending = memoryview(body)
        self._write_pending(call)

    def fail(self, call: Call, code: int, message: str, extra: bytes = b"") -> None:
        """End the call with a status (Trailers-Only: no message was sent)."""
        if not self._take(call):
            return
        block = h2.trailers_only(code, message, extra)
        self._send(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.stream, block))
        self._closed(call)

    def _take(self, call: Call) -> bool:
        """True once per call, while its stream is still open on a live connection."""
        if call.answered or self.calls.get(call.stream) is not call:
            return False
        call.answered = True
        self.sink.settled(call)
        return not self.transport.is_closing()

    def _write_pending(self, call: Call) -> None:
        data = call.pending
        while data:
            room = min(self._send_window, call.send_window, self._peer_max_frame)
            if room <= 0:
                call.pending = data
                self._blocked[call.stream] = call
                return
            chunk = data[:room]
            self._send(h2.frame(h2.DATA, 0, call.stream, bytes(chunk)))
            self._send_window -= len(chunk)
            call.send_window -= len(chunk)
            data = data[len(chunk) :]
        call.pending = None
        self._blocked.pop(call.stream, None)
        trailers = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.stream, h2.TRAILER_OK)
        self._send(trailers)
        self._closed(call)

    def _pump_blocked(self) -> None:
        for call in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._write_pending(call)

    def _closed(self, call: Call) -> None:
        """Our side of the stream is done; if the client is still sending, stop it."""
        self.calls.pop(call.stream, None)
        if not call.request_complete:
            self._send(h2.rst_stream(call.stream, h2.NO_ERROR))
        if not self.calls and self._out:  # no other answer due here to share the write with
            self._flush()
        self._close_if_idle()

    # -- connection --------------------------------------------------------------------------------
    def go_away(self) -> None:
        """Stop taking new calls (the drain): calls already received are still answered."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self._send(h2.goaway(self.last_stream, h2.NO_ERROR))
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.calls and self.transport is not None:
            self.close_gently()

    def close_gently(self) -> None:
        """Send what is buffered, then a FIN, and read (and drop) what the client still sends
        until it closes too, for at most LINGER_S. Closing at once leaves the client's late
        WINDOW_UPDATEs and PINGs unread, so the kernel answers them with a reset, and a reset
        can make the client drop answers it has received but not yet read."""
        if self.lingering or self.transport is None or self.transport.is_closing():
            return
        self._flush()
        self.lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        asyncio.get_running_loop().call_later(self.LINGER_S, self.transport.close)

    def close(self, code: int, reason: str) -> None:
        """Drop the connection (limits: too many, too slow); its calls are cancelled."""
        if self.transport is not None and not self.transport.is_closing():
            self._fail_connection(code, reason)

    def _fail_connection(self, code: int, reason: str) -> None:
        logger.info("gRPC connection closed: %s", reason)
        self._send(h2.goaway(self.last_stream, code, reason.encode()[:200]))
        self._flush()
        self.transport.close()

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()


class ProtocolError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
