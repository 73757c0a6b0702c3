"""HTTP/2 framing for the lean gRPC server (RFC 9113), only what a gRPC server sends and reads.

Header blocks are decoded with `hpack` (the client's dynamic table must be tracked), but every
block we send is fixed or nearly so, so it is encoded here as HPACK literals that never touch a
dynamic table: the response headers are one constant, a status trailer a few bytes.
"""

from __future__ import annotations

import struct
from urllib.parse import quote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
WINDOW = struct.Struct(">I")
SETTING = struct.Struct(">HI")
MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC: compressed flag, message length

# Frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS identifiers
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 1, 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 4, 5, 6
# Error codes (RST_STREAM, GOAWAY)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 8, 9, 11

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in values.items()))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, WINDOW.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, WINDOW.pack(code))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code) + debug)


def parse_settings(payload: bytes) -> dict[int, int]:
    return {k: v for k, v in (SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6))}


def strip_padding(flags: int, payload: bytes, priority: bool) -> bytes:
    """A HEADERS/DATA payload without its padding (and HEADERS' priority fields)."""
    start, end = 0, len(payload)
    if flags & PADDED:
        start, end = 1, end - payload[0]
    if priority and flags & PRIORITY_FLAG:
        start += 5
    if end < start:
        raise ValueError("padding longer than the frame")
    return payload[start:end]


# -- HPACK literals (RFC 7541 §6.2.2: literal header field without indexing) -------------------
def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7) + value


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _string(name) + _string(value)


def literal_indexed_name(index: int, value: bytes) -> bytes:
    return _integer(index, 4) + _string(value)


STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
CONTENT_TYPE_INDEX = 31  # static table name "content-type"
RESPONSE_HEADERS = STATUS_200 + literal_indexed_name(CONTENT_TYPE_INDEX, b"application/grpc")
TRAILER_OK = literal(b"grpc-status", b"0")


def status_block(code: int, message: str) -> bytes:
    """The grpc-status / grpc-message header fields (message percent-encoded, as gRPC says)."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
        block += literal(b"grpc-message", encoded)
    return block


def trailers_only(code: int, message: str, extra: bytes = b"") -> bytes:
    """A whole error answer in one header block (gRPC's Trailers-Only response)."""
    return RESPONSE_HEADERS + status_block(code, message) + extra


# -- gRPC header values -------------------------------------------------------------------------
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout_s(value: bytes) -> float | None:
    """Seconds of a `grpc-timeout` value (e.g. b"100m"), None when it is malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit
