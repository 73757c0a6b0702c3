"""A front-end worker of `--workers N`: serves V2 REST and gRPC on the shared ports, decodes and
validates each request exactly as the single-process predictor does (the same RequestCore,
validator and error model), and hands the arrays to the engine owner through shared memory.

To the request core the worker's model is an EnginePredictor whose engine call goes over the
slab (RemotePredictor); readiness, metadata and the model-config extension read the owner's
signature, received when the worker connects (the owner only listens once its engine is warm).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from kbundle.predictors import model_config
from kbundle.predictors.admission import Admission, queue_policy
from kbundle.predictors.batcher import Waiter
from kbundle.predictors.predictor import EnginePredictor
from kbundle.predictors.workers import wire
from kbundle.predictors.workers.link import LoopReply, OwnerLink
from kbundle.predictors.workers.pod_metrics import pod_metrics_hook
from kbundle.predictors.workers.shm import SHM_DIR, QueueGauge, Slab, SlabSize
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.serving.core import OnCancel
from kbundle.serving.limits import HttpLimits
from kbundle.serving.server import KbundleModelServer
from kbundle.specs import Signature
from kbundle.validation import SignatureValidator

logger = logging.getLogger("kbundle.worker")
REST_FD_ENV = "KBUNDLE_WORKERS_REST_FD"
INDEX_ENV = "KBUNDLE_WORKERS_INDEX"


@dataclass(frozen=True)
class RemoteEngine:
    """What the routes read of the owner's engine (metadata, model config)."""

    signature: Signature
    kind: str
    device: str


class OwnerBatcher:
    """Marks that the owner batches (the model config then reports max_batch_size)."""


class RemotePredictor(EnginePredictor):
    def __init__(self, name: str, model_dir: str, settings, link: OwnerLink):
        super().__init__(name, model_dir, settings)
        self.link = link

    def load(self) -> bool:
        signature, kind, device, batched, gauge = self.link.hello()
        self.loaded_engine = RemoteEngine(signature, kind, device)
        self.queue = QueueGauge(Path(gauge), create=False)
        self.admission = Admission(self.name, queue_policy(self.settings, 0))
        self._validator = SignatureValidator(self.name, signature)
        self.batcher = OwnerBatcher() if batched else None
        self.link.on_lost = self._owner_lost
        self.ready = True
        return True

    def refuse_if_full(self, ahead: int = 0) -> None:
        """QueueFull now when the owner's queue (its published depth) is full: the request core
        asks before reading and decoding the body, as in the single process. The owner checks
        again when the call arrives, and its check decides."""
        if self.ready:  # a lost owner's last depth must not turn its 503 into a 429
            self.admission.check_room(self.queue.get() + ahead)

    def _owner_lost(self) -> None:
        self.ready = False  # new calls: 503 / UNAVAILABLE from the request core at once

    def stop(self) -> None:
        self.ready = False
        self.link.close()
        self.link.slab.unlink()

    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        seq = self.link.call(request, LoopReply(loop, future))
        try:
            outputs, version = await future
        except asyncio.CancelledError:  # the client left (REST disconnect): tell the owner
            self.link.cancel(seq)
            raise
        return ArrayResponse(outputs=outputs, model_version=version)

    def infer_arrays_blocking(
        self, request: ArrayRequest, loop: asyncio.AbstractEventLoop, on_done: OnCancel
    ) -> ArrayResponse:
        waiter = Waiter()
        seq = self.link.call(
            request, lambda ok, v: (waiter.set_result if ok else waiter.set_exception)(v)
        )

        def cancel() -> None:  # run when the call ends; a no-op unless the reply is still due
            if waiter.cancel():
                self.link.cancel(seq)

        on_done(cancel)
        outputs, version = waiter.result()
        return ArrayResponse(outputs=outputs, model_version=version)


class WorkerModelServer(KbundleModelServer):
    """Serves on the REST socket the supervisor bound and passed down, and on the gRPC port
    shared with the other workers (SO_REUSEPORT among our own processes only)."""

    link: OwnerLink

    def _rest_socket(self) -> socket.socket:
        return socket.socket(fileno=int(os.environ[REST_FD_ENV]))

    async def _serve(self) -> None:
        self.link.read_on(asyncio.get_running_loop())
        await super()._serve()


def main(argv: list[str] | None = None) -> int:
    from kbundle.predictors.__main__ import settings_for, setup_process

    args = setup_process(argv, "worker")
    settings = settings_for(args)
    slab_path = SHM_DIR / f"kbundle-{os.getppid()}-w{os.getpid()}"
    slab = Slab(slab_path, SlabSize.from_env(), create=True)
    try:
        link = OwnerLink(os.environ[wire.SOCKET_ENV], slab)
        predictor = RemotePredictor(args.model_name, args.model_dir, settings, link)
        predictor.load()
        logger.info("worker %s (pid %d) connected to the engine owner", _index(), os.getpid())
        args.share_ports = True
        server = WorkerModelServer(
            args,
            rest_hooks=[model_config.rest_hook, pod_metrics_hook],
            grpc_hooks=[model_config.grpc_hook],
            http_limits=HttpLimits.from_env(settings.max_request_bytes),
        )
        server.link = link
        server.start([predictor])
    finally:
        slab.unlink()
    return 0


def _index() -> str:
    return os.environ.get(INDEX_ENV, "?")


if __name__ == "__main__":
    sys.exit(main())
