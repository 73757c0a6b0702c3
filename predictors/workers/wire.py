"""The control channel between a front-end worker and the engine owner: small pickled tuples,
length-prefixed, over a unix socket. Tensors never travel here on the hot path (they are in the
slab, kbundle.predictors.workers.shm); only a request too large for a slot, or a BYTES tensor,
goes inline.

Request:  (seq, request id, slot, descs | None, inline inputs | None, outputs | None, deadline)
Cancel:   (seq,)  the client left; the owner drops the call if still queued and replies as usual
Reply:    (seq, True, descs | None, inline outputs | None, model version)
          (seq, False, status, message, outcome)
Hello:    (slab path, slot bytes, slots) -> (signature, engine kind, device, batched, queue gauge
          path)
The deadline is `time.monotonic()`, which is one clock for every process of the machine.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
SOCKET_ENV = "KBUNDLE_WORKERS_OWNER_SOCKET"


def frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class Frames:
    """Splits a byte stream into messages: every complete one in what has arrived so far, so a
    batch's replies that came in one read are handled together."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        messages, start, buf = [], 0, self._buf
        while len(buf) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, start)
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            messages.append(pickle.loads(buf[start + HEADER.size : end]))
            start = end
        del buf[:start]
        return messages


def read_exact(sock_file, size: int) -> bytes:
    data = sock_file.read(size)
    if data is None or len(data) < size:
        raise EOFError("the peer closed the control channel")
    return data


def receive(sock_file) -> Any:
    """One message from a blocking socket file (`sock.makefile('rb')`); EOFError at the end."""
    (size,) = HEADER.unpack(read_exact(sock_file, HEADER.size))
    return pickle.loads(read_exact(sock_file, size))


async def receive_async(reader) -> Any:
    """One message from an asyncio StreamReader; asyncio.IncompleteReadError at the end."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock
