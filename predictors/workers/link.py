"""The worker's end of the control channel: sends calls to the engine owner and reads its
replies on the worker's serving loop, handing each back (to the loop's future, or to a gRPC
thread's Waiter).

A slot is released only when the owner's reply arrives (never on a client cancel: the owner may
still write outputs into it, or its engine read it); a cancel goes to the owner as `(seq,)`.
When the owner goes away, every call waiting and every later call fails at once with
UNAVAILABLE (503), never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kbundle.errors import KBundleError, ModelUnavailable, Status
from kbundle.predictors.workers import wire
from kbundle.predictors.workers.shm import Slab
from kbundle.serving.arrays import ArrayRequest

logger = logging.getLogger("kbundle.worker")
READ_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class LoopReply:
    """A reply for a coroutine on `loop` (REST): settled on the loop, with its batch-mates."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


# A blocking caller's reply (gRPC threads): ok, value: (outputs, model version) | KBundleError
Reply = Callable[[bool, object], None] | LoopReply


def settle_futures(settled: list[tuple[asyncio.Future, bool, object]]) -> None:
    for future, ok, value in settled:
        if future.done():  # the client left; the slot was still released on the reply
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def owner_lost() -> ModelUnavailable:
    return ModelUnavailable("the engine owner process exited; the predictor is restarting")


class OwnerLink:
    def __init__(self, path: str, slab: Slab):
        self.slab = slab
        self.sock = wire.connect(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._file = self.sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[int | None, Reply]] = {}
        self._seq = itertools.count()
        self._outbox: list[bytes] = []
        self._frames = wire.Frames()
        self._buffer = bytearray(READ_BYTES)
        self._loop: asyncio.AbstractEventLoop | None = None  # where replies are read
        self.lost = False
        self.on_lost: Callable[[], None] = lambda: None

    def hello(self) -> tuple:
        """(signature, engine kind, device, batched) of the owner's loaded engine."""
        size = self.slab.size
        self.sock.sendall(wire.frame((str(self.slab.path), size.slot_bytes, size.slots)))
        return wire.receive(self._file)  # nothing else arrives before our first call

    def read_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the owner's replies on the worker's serving loop (a readable callback), from
        before its first call: a reply settles its future with no thread hop or loop wake-up,
        a blocking caller's (the sync gRPC server's threads) is handed over at once, and an
        owner that goes away is seen even by a worker that has no call in flight."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)
        # uvloop's add_reader makes the fd non-blocking; the senders (gRPC threads too) rely on a
        # blocking sendall, and polling for readable does not need non-blocking mode.
        self.sock.setblocking(True)

    def call(self, request: ArrayRequest, reply: Reply) -> int:
        """Sends the call; its seq (for `cancel`). The reply comes to `reply`."""
        slot = self.slab.acquire()
        descs = self.slab.write(slot, request.inputs) if slot is not None else None
        inline = request.inputs if descs is None else None
        seq = next(self._seq)
        outputs, deadline = request.requested_outputs, request.deadline
        data = wire.frame((seq, request.id, slot, descs, inline, outputs, deadline))
        with self._send_lock:
            if self.lost:
                self._free(slot)
                raise owner_lost()
            self._pending[seq] = (slot, reply)
            if not isinstance(reply, LoopReply):
                self.sock.sendall(data)
                return seq
            # REST calls decoded in one loop tick leave in one send at its end, so the owner
            # reads them together and batches them as the single process would.
            self._outbox.append(data)
            if len(self._outbox) == 1:
                reply.loop.call_soon(self._flush)
        return seq

    def cancel(self, seq: int) -> None:
        """The caller left: the owner drops the call if it is still queued. Its slot is still
        released only by the owner's reply, which comes once nothing in the owner reads it."""
        with self._send_lock:
            if self.lost or seq not in self._pending:
                return  # answered already
            if self._outbox:  # the call itself may still be waiting there: keep the order
                self._outbox.append(wire.frame((seq,)))
            else:
                self.sock.sendall(wire.frame((seq,)))

    def _flush(self) -> None:
        with self._send_lock:
            data, self._outbox = b"".join(self._outbox), []
            if data and not self.lost:
                self.sock.sendall(data)

    def _free(self, slot: int | None) -> None:
        if slot is not None:
            self.slab.release(slot)

    def _readable(self) -> None:
        """The loop's readable callback (the socket stays blocking for the senders)."""
        loop = self._loop
        try:
            size = self.sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            loop.remove_reader(self.sock.fileno())
            self._lose()
            return
        for other, settled in self._received(size).items():
            if other is loop:
                settle_futures(settled)
            else:
                other.call_soon_threadsafe(settle_futures, settled)

    def _received(self, size: int) -> dict[asyncio.AbstractEventLoop, list]:
        """Settles the replies in the first `size` bytes read: blocking callers at once, loop
        futures returned by loop, to settle with one call each."""
        loops: dict[asyncio.AbstractEventLoop, list] = {}
        # recv_into one buffer: recv(n) would allocate n bytes per read (an mmap at 1 MiB)
        for message in self._frames.feed(memoryview(self._buffer)[:size]):
            self._settle(message, loops)
        return loops

    def _settle(self, message: tuple, loops: dict) -> None:
        seq, ok, *rest = message
        slot, reply = self._pending.pop(seq)
        if ok:
            descs, inline, version = rest
            value = (self.slab.copies(descs) if descs is not None else inline, version)
        else:
            status, text, outcome = rest
            value = KBundleError(text, Status(status))
            value.outcome = outcome
        self._free(slot)
        if isinstance(reply, LoopReply):
            loops.setdefault(reply.loop, []).append((reply.future, ok, value))
        else:
            reply(ok, value)

    def _lose(self) -> None:
        with self._send_lock:
            self.lost = True
            pending, self._pending = self._pending, {}
        logger.error("engine owner gone: %d calls in flight fail with UNAVAILABLE", len(pending))
        self.on_lost()
        for _, reply in pending.values():
            if isinstance(reply, LoopReply):
                reply.loop.call_soon_threadsafe(
                    settle_futures, [(reply.future, False, owner_lost())]
                )
            else:
                reply(False, owner_lost())

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
