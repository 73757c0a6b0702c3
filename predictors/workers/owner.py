"""The engine owner of `--workers N`: loads the engine once, runs the one dynamic batcher for
every front-end worker, and answers their calls through shared memory.

Started by the supervisor (kbundle.predictors.workers.supervisor) with the predictor's own
arguments. It listens on a unix socket only after the engine is loaded and warmed up, which is
what makes every worker (and so every port) ready. The predictor itself (EnginePredictor, its
batcher and engine) is used unchanged: a worker's call becomes an `ArrayRequest` whose inputs are
views into that worker's slab.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import weakref
from functools import partial
from pathlib import Path

import numpy as np

from kbundle.predictors.predictor import EnginePredictor
from kbundle.predictors.workers import wire
from kbundle.predictors.workers.shm import SHM_DIR, QueueGauge, Slab, SlabSize
from kbundle.serving.arrays import ArrayRequest
from kbundle.serving.core import as_error
from kbundle.serving.lifecycle import freeze_startup_heap
from kbundle.serving.loop_lag import LoopLagProbe
from kbundle.serving.server import serving_loop_factory
from kbundle.serving.status_map import log_if_internal

logger = logging.getLogger("kbundle.owner")


class WorkerLink(asyncio.Protocol):
    """One front-end worker's connection: its slab and its calls in flight. A protocol, not a
    stream: each read's calls are queued from the read callback itself, with no task woken."""

    def __init__(self, predictor: EnginePredictor, gauge: QueueGauge):
        self.predictor, self.gauge = predictor, gauge
        self.slab: Slab | None = None
        # By the worker's seq, to cancel one: the batcher's future of a batched call, else a task.
        self.calls: dict[int, asyncio.Future] = {}
        self._replies: list[bytes] = []
        self._frames = wire.Frames()

    @property
    def tasks(self) -> list[asyncio.Future]:
        return list(self.calls.values())

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        messages = self._frames.feed(data)
        if self.slab is None and messages:  # the worker's first message is its hello
            self._hello(messages.pop(0))
        # Every call that arrived in one read joins the queue in this callback, so they reach
        # the batcher together.
        for message in messages:
            self._receive(self.loop, message)
        # After the new calls joined the queue and a dispatch took its batch from it (both
        # scheduled now), so workers never read more than is queued.
        self.loop.call_soon(self.loop.call_soon, self._publish)

    def connection_lost(self, exc: Exception | None) -> None:
        # A worker that exits normally unlinks its slab; one killed cannot.
        if self.slab is not None:
            self.slab.unlink()

    def _receive(self, loop: asyncio.AbstractEventLoop, message: tuple) -> None:
        if len(message) == 1:  # (seq,): its client left; drop it if still queued
            task = self.calls.get(message[0])
            if task is not None:
                task.cancel()
            return
        if self.predictor.batcher is not None:
            self._enqueue(*message)
            return
        seq = message[0]
        task = self.calls[seq] = loop.create_task(self.one(*message))
        task.add_done_callback(lambda _: self._done(seq, task))

    def _done(self, seq: int, task: asyncio.Task) -> None:
        del self.calls[seq]
        if task.cancelled():  # cancelled before it began: it never reached the queue
            self._count_disconnected()
            self._reply(self._failed(seq, asyncio.CancelledError()))

    def _count_disconnected(self) -> None:
        admission = getattr(self.predictor.batcher or self.predictor.unbatched, "admission", None)
        if admission is not None:
            admission.count_disconnected()

    def _publish(self) -> None:
        queue = self.predictor.batcher or self.predictor.unbatched
        self.gauge.set(queue.queued)

    def _hello(self, hello: tuple) -> None:
        path, slot_bytes, slots = hello
        self.slab = Slab(Path(path), SlabSize(slot_bytes, slots), create=False)
        engine = self.predictor.loaded_engine
        batched = self.predictor.batcher is not None
        signature = self.predictor.signature
        hello = (signature, engine.kind, engine.device, batched, str(self.gauge.path))
        self.transport.write(wire.frame(hello))

    def _request(self, request_id, descs, inline, outputs, deadline) -> ArrayRequest:
        inputs = inline if inline is not None else self.slab.views(descs)
        return ArrayRequest(request_id, inputs, outputs, deadline=deadline)

    def _enqueue(self, seq, request_id, slot, descs, inline, outputs, deadline) -> None:
        """A batched call straight into the batcher's queue, answered from its future's
        callback: no task or coroutine per call, which was most of the owner's own cost."""
        request = self._request(request_id, descs, inline, outputs, deadline)
        try:
            names, future = self.predictor.enqueue_arrays(request)
        except Exception as exc:  # refused (queue full, bad shape): nothing was queued
            self._end(seq, slot, descs, request, exc=exc)
            return
        self.calls[seq] = future
        future.add_done_callback(partial(self._finished, seq, slot, descs, names, request))

    def _finished(self, seq, slot, descs, names, request, future: asyncio.Future) -> None:
        del self.calls[seq]
        if future.cancelled():
            self._end(seq, slot, descs, request, exc=asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self._end(seq, slot, descs, request, exc=exc)
        else:
            response = self.predictor.response_of(names, future.result())
            self._end(seq, slot, descs, request, response)

    async def one(self, seq, request_id, slot, descs, inline, outputs, deadline) -> None:
        """An unbatched call, as a task."""
        request = self._request(request_id, descs, inline, outputs, deadline)
        try:
            response = await self.predictor.infer_arrays(request)
        except (asyncio.CancelledError, Exception) as exc:
            self._end(seq, slot, descs, request, exc=exc)
        else:
            self._end(seq, slot, descs, request, response)

    def _end(
        self,
        seq,
        slot,
        descs,
        request: ArrayRequest,
        response=None,
        exc: BaseException | None = None,
    ) -> None:
        """The reply to a call that ended: its answer or its error. A call the worker cancelled
        is skipped by the batcher if still queued (counted as disconnected); only the reply
        releases the slot, so it waits until no array here views the slot (a batch already
        running still reads it), and no outputs are written."""
        if isinstance(exc, asyncio.CancelledError) and descs:
            self._reply_when_unused(seq, list(request.inputs.values()))
        elif exc is not None:
            log_if_internal(exc, f"owner infer of '{self.predictor.name}'")
            self._reply(self._failed(seq, exc))
        else:
            self._reply(self._answer(seq, slot, descs, response))

    def _reply_when_unused(self, seq: int, views: list[np.ndarray]) -> None:
        """The cancelled reply, once every view of the slot is gone (freed on the engine's
        thread too, hence call_soon_threadsafe)."""
        loop, left = asyncio.get_running_loop(), [len(views)]

        def gone() -> None:
            left[0] -= 1
            if not left[0]:
                self._reply(self._failed(seq, asyncio.CancelledError()))

        for view in views:
            # Not at interpreter exit: the loop is closed then, and the worker gone.
            weakref.finalize(view, loop.call_soon_threadsafe, gone).atexit = False

    def _reply(self, reply: tuple) -> None:
        if not self._replies:  # the first reply of this loop tick: flush them all at its end
            asyncio.get_running_loop().call_soon(self._flush)
        self._replies.append(wire.frame(reply))

    def _flush(self) -> None:
        """One write (one syscall) for every reply of a batch, not one per request."""
        replies, self._replies = self._replies, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(replies))
        self._publish()  # the batch left the queue and the next one was dispatched

    @staticmethod
    def _failed(seq: int, exc: BaseException) -> tuple:
        error = as_error(exc)
        return (seq, False, error.status.value, error.message, error.outcome)

    def _answer(self, seq: int, slot: int | None, descs, response) -> tuple:
        """Outputs into the rest of the request's slot; inline when there is none or no room."""
        out = None
        if slot is not None:
            out = self.slab.write(slot, response.outputs, self.slab.used(slot, descs or []))
        inline = response.outputs if out is None else None
        return (seq, True, out, inline, response.model_version)


async def serve(predictor: EnginePredictor, path: str) -> None:
    """Serve workers until SIGTERM (the supervisor sends it after every worker has exited)."""
    links: list[WorkerLink] = []
    # In /dev/shm under the supervisor's pid: it removes the file if we are killed.
    gauge = QueueGauge(SHM_DIR / f"kbundle-{os.getppid()}-queue", create=True)

    def accept() -> WorkerLink:
        links.append(WorkerLink(predictor, gauge))
        return links[-1]

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_unix_server(accept, path + ".tmp")
    freeze_startup_heap()  # loaded and warmed up: a full collection must not walk all that
    lag = LoopLagProbe(loop).start()
    os.rename(path + ".tmp", path)  # the supervisor starts workers once this name exists
    logger.info("engine owner ready on %s (pid %d)", path, os.getpid())
    try:
        await stop.wait()
    finally:
        gauge.unlink()
    server.close()
    lag.stop()
    pending = [task for link in links for task in link.tasks]
    if pending:  # workers drained first, so this is only what they abandoned
        await asyncio.wait(pending, timeout=predictor.settings.max_batch_delay_ms / 1000 + 5)


def main(argv: list[str] | None = None) -> int:
    from kbundle.predictors.__main__ import load_predictor, setup_process
    from kbundle.predictors.workers.flag import resolve_workers

    args = setup_process(argv, "owner")
    # The front ends need CPU too: ONNX Runtime's intra-op threads spin between batches, so a
    # pool as wide as the budget takes the workers' cores (an explicit setting still wins).
    predictor = load_predictor(args, front_ends=resolve_workers(args.workers))
    if isinstance(predictor, int):
        return predictor
    try:
        # The serving loop's (uvloop under kserve's default `--event_loop auto`): every call of
        # every worker crosses this loop, so its own cost per read and write bounds them all.
        with asyncio.Runner(loop_factory=serving_loop_factory(args.event_loop)) as runner:
            runner.run(serve(predictor, os.environ[wire.SOCKET_ENV]))
    finally:
        predictor.stop()
    logger.info("engine owner exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
