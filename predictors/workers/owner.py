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
from pathlib import Path

from kbundle.predictors.predictor import EnginePredictor
from kbundle.predictors.workers import wire
from kbundle.predictors.workers.shm import Slab, SlabSize
from kbundle.serving.arrays import ArrayRequest
from kbundle.serving.core import as_error
from kbundle.serving.status_map import log_if_internal

logger = logging.getLogger("kbundle.owner")
READ_BYTES = 1 << 20


class WorkerLink:
    """One front-end worker's connection: its slab and its calls in flight."""

    def __init__(self, predictor: EnginePredictor, reader, writer):
        self.predictor, self.reader, self.writer = predictor, reader, writer
        self.slab: Slab | None = None
        self.tasks: set[asyncio.Task] = set()
        self._replies: list[bytes] = []

    async def serve(self) -> None:
        self._hello(await wire.receive_async(self.reader))
        loop, frames = asyncio.get_running_loop(), wire.Frames()
        try:
            # Every message that arrived in one read is started in the same tick, so they reach
            # the batcher together.
            while data := await self.reader.read(READ_BYTES):
                for message in frames.feed(data):
                    task = loop.create_task(self.one(*message))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        except ConnectionError:
            pass
        finally:
            # A worker that exits normally unlinks its slab; one killed cannot.
            self.slab.unlink()

    def _hello(self, hello: tuple) -> None:
        path, slot_bytes, slots = hello
        self.slab = Slab(Path(path), SlabSize(slot_bytes, slots), create=False)
        engine = self.predictor.loaded_engine
        batched = self.predictor.batcher is not None
        signature = self.predictor.signature
        self.writer.write(wire.frame((signature, engine.kind, engine.device, batched)))

    async def one(self, seq, request_id, slot, descs, inline, outputs, deadline) -> None:
        inputs = inline if inline is not None else self.slab.views(descs)
        request = ArrayRequest(request_id, inputs, outputs, deadline=deadline)
        try:
            response = await self.predictor.infer_arrays(request)
        except Exception as exc:
            log_if_internal(exc, f"owner infer of '{self.predictor.name}'")
            error = as_error(exc)
            reply = (seq, False, error.status.value, error.message, error.outcome)
        else:
            reply = self._answer(seq, slot, descs, response)
        if not self._replies:  # the first reply of this loop tick: flush them all at its end
            asyncio.get_running_loop().call_soon(self._flush)
        self._replies.append(wire.frame(reply))

    def _flush(self) -> None:
        """One write (one syscall) for every reply of a batch, not one per request."""
        replies, self._replies = self._replies, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(replies))

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

    async def accept(reader, writer) -> None:
        link = WorkerLink(predictor, reader, writer)
        links.append(link)
        await link.serve()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_unix_server(accept, path + ".tmp")
    os.rename(path + ".tmp", path)  # the supervisor starts workers once this name exists
    logger.info("engine owner ready on %s (pid %d)", path, os.getpid())
    await stop.wait()
    server.close()
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
        asyncio.run(serve(predictor, os.environ[wire.SOCKET_ENV]))
    finally:
        predictor.stop()
    logger.info("engine owner exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
