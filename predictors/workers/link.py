"""The worker's end of the control channel: sends calls to the engine owner, one reader thread
hands the replies back (to a gRPC thread's Waiter or to the event loop's future).

A slot is released only when the owner's reply arrives (never on a client cancel: the owner may
still write outputs into it). When the owner goes away, every call waiting and every later call
fails at once with UNAVAILABLE (503), never a hang.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Callable

from kbundle.errors import KBundleError, ModelUnavailable, Status
from kbundle.predictors.workers import wire
from kbundle.predictors.workers.shm import Slab
from kbundle.serving.arrays import ArrayRequest

logger = logging.getLogger("kbundle.worker")
# ok, value: (outputs, model version) when ok, else the KBundleError
Reply = Callable[[bool, object], None]


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
        self.lost = False
        self.on_lost: Callable[[], None] = lambda: None

    def hello(self) -> tuple:
        """(signature, engine kind, device, batched) of the owner's loaded engine."""
        size = self.slab.size
        self.sock.sendall(wire.frame((str(self.slab.path), size.slot_bytes, size.slots)))
        answer = wire.receive(self._file)
        threading.Thread(target=self._read, name="owner-link", daemon=True).start()
        return answer

    def call(self, request: ArrayRequest, reply: Reply) -> None:
        slot = self.slab.acquire()
        descs = self.slab.write(slot, request.inputs) if slot is not None else None
        inline = request.inputs if descs is None else None
        seq = next(self._seq)
        message = (
            seq,
            request.id,
            slot,
            descs,
            inline,
            request.requested_outputs,
            request.deadline,
        )
        with self._send_lock:
            if self.lost:
                self._free(slot)
                raise owner_lost()
            self._pending[seq] = (slot, reply)
            self.sock.sendall(wire.frame(message))

    def _free(self, slot: int | None) -> None:
        if slot is not None:
            self.slab.release(slot)

    def _read(self) -> None:
        try:
            while True:
                self._settle(wire.receive(self._file))
        except (EOFError, OSError):
            pass
        self._lose()

    def _settle(self, message: tuple) -> None:
        seq, ok, *rest = message
        slot, reply = self._pending.pop(seq)
        if ok:
            descs, inline, version = rest
            outputs = self.slab.copies(descs) if descs is not None else inline
            self._free(slot)
            reply(True, (outputs, version))
            return
        self._free(slot)
        status, text, outcome = rest
        error = KBundleError(text, Status(status))
        error.outcome = outcome
        reply(False, error)

    def _lose(self) -> None:
        with self._send_lock:
            self.lost = True
            pending, self._pending = self._pending, {}
        logger.error("engine owner gone: %d calls in flight fail with UNAVAILABLE", len(pending))
        self.on_lost()
        for _, reply in pending.values():
            reply(False, owner_lost())

    def close(self) -> None:
        self.sock.close()
