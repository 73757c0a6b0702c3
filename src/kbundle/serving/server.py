"""kserve.ModelServer with our V2 routes, our gRPC servicer and one error model.

Everything else (health, metadata, metrics, V1, repository extension) stays kserve's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc import aio
from kserve import Model, ModelServer
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.server import RESTServer

from kbundle.serving import http_guard, limits
from kbundle.serving.asgi_infer import InferFastPath
from kbundle.serving.grpc_sync import SERVICE, LoopBridge, bridge_generic, v2_handlers
from kbundle.serving.rest_routes import register_error_handlers, register_infer_routes
from kbundle.serving.v2_grpc import ArrayServicer, StatusInterceptor

logger = logging.getLogger("kbundle.server")

# gRPC handler threads: each in-flight ModelInfer holds one while its batch runs, so they cap
# the formed batch (the MLP's engine limit is flat from batch 8 up). 16 measured at least as
# fast as 32 and 64 on one core (tiny and MLP, concurrency 32); kserve's --max_threads or
# KBUNDLE_GRPC_THREADS raise it.
GRPC_THREADS_ENV = "KBUNDLE_GRPC_THREADS"
DEFAULT_GRPC_THREADS = 16


def grpc_threads() -> int:
    return int(os.environ.get(GRPC_THREADS_ENV, DEFAULT_GRPC_THREADS))


# Extra routes/handlers a component adds (e.g. the model-configuration extension).
RestHook = Callable[["KbundleRESTServer"], None]
GrpcHook = Callable[["KbundleGRPCServer"], Sequence[grpc.GenericRpcHandler]]


class KbundleRESTServer(RESTServer):
    rest_hooks: Sequence[RestHook] = ()
    http_limits: limits.HttpLimits | None = None

    def create_application(self) -> None:
        from kserve.model_server import app

        for hook in self.rest_hooks:
            hook(self)
        register_infer_routes(app, self.dataplane)
        super().create_application()
        register_error_handlers(app)
        # Added last, so outermost: V2 infer never pays FastAPI routing or middleware.
        app.add_middleware(InferFastPath, dataplane=self.dataplane)
        if self.http_limits is not None:  # outermost: a body over the limit is never read
            app.add_middleware(http_guard.BodyLimit, limit=self.http_limits.max_request_bytes)

    def _add_middlewares(self, app) -> None:
        """kserve's, minus TimingMiddleware: it logs a line per request (measured hot-path cost)
        and duplicates what /metrics already records. `--access_log_format` still works."""
        if self.access_log_format:
            super()._add_middlewares(app)


class KbundleGRPCServer(GRPCServer):
    """kserve's V2 gRPC service on grpcio's sync server (kbundle.serving.grpc_sync says why)."""

    grpc_hooks: Sequence[GrpcHook] = ()

    async def start(self, max_workers: int) -> None:
        self._stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        servicer = ArrayServicer(self._data_plane, self._model_repository_extension)
        threads = max(max_workers, grpc_threads())
        # No interceptors: errors are mapped inside each handler (grpc_sync.abort_mapped), and
        # kserve's LoggingInterceptor logs a line per call (~0.45 ms CPU per request,
        # bench/results/transformer_hop.md); errors are still logged.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs["max_request_bytes"]),
            ],
        )
        handlers = v2_handlers(servicer, bridge)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self._server.add_registered_method_handlers(SERVICE, handlers)
        for hook in self.grpc_hooks:
            self._server.add_generic_rpc_handlers(bridge_generic(hook(self), bridge))
        self._server.add_insecure_port(limits.grpc_address(self._port))
        self._server.start()
        logger.info("gRPC V2 on port %s (%d threads)", self._port, threads)
        await self._stopped.wait()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is None:
            return
        logger.info("Waiting for gRPC server shutdown")
        done = self._server.stop(grace=self._grace_period)
        # Handlers still in flight need this loop to finish: wait off the loop.
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        self._stopped.set()
        logger.info("gRPC server shutdown complete")


class KbundleAioGRPCServer(GRPCServer):
    """kserve's V2 gRPC service on grpc.aio, for components whose work is all on the event loop
    (the transformer: its hop is an async client). The sync server would add two thread hops per
    call there; for the predictor, whose batcher takes requests from any thread, it is faster."""

    grpc_hooks: Sequence[GrpcHook] = ()

    async def start(self, max_workers: int) -> None:
        servicer = ArrayServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # No kserve LoggingInterceptor: its INFO line per call cost ~0.45 ms CPU per request.
            interceptors=(StatusInterceptor(),),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs["max_request_bytes"]),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        for hook in self.grpc_hooks:
            self._server.add_generic_rpc_handlers(tuple(hook(self)))
        self._server.add_insecure_port(limits.grpc_address(self._port))
        logger.info("gRPC V2 on port %s (grpc.aio)", self._port)
        await self._server.start()
        await self._server.wait_for_termination()


GRPC_SERVERS: dict[str, type[GRPCServer]] = {"sync": KbundleGRPCServer, "aio": KbundleAioGRPCServer}


class KbundleModelServer(ModelServer):
    """ModelServer that serves one process: kserve's `--workers > 1` pickles the model into
    spawned children, which an engine session cannot survive (KSERVE_NOTES §1)."""

    def __init__(
        self,
        args: argparse.Namespace,
        rest_hooks: Sequence[RestHook] = (),
        grpc_hooks: Sequence[GrpcHook] = (),
        grpc_server: str = "sync",
        http_limits: limits.HttpLimits | None = None,
    ):
        self._grpc_server_class = GRPC_SERVERS[grpc_server]
        super().__init__(
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            workers=1,
            max_threads=args.max_threads,
            max_asyncio_workers=args.max_asyncio_workers,
            enable_grpc=args.enable_grpc,
            enable_docs_url=args.enable_docs_url,
            enable_latency_logging=args.enable_latency_logging,
            access_log_format=args.access_log_format,
            event_loop=args.event_loop,
            timeout_keep_alive=args.timeout_keep_alive,
        )
        self._args = args
        self._limits = http_limits or limits.HttpLimits.from_env()
        self._rest_hooks = tuple(rest_hooks)
        self._grpc_hooks = tuple(grpc_hooks)

    def start(self, models: list[Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        limits.tune_malloc()
        rest = KbundleRESTServer(
            "kserve.model_server:app",
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        rest.rest_hooks = self._rest_hooks
        rest.http_limits = self._limits
        http_guard.apply_to_uvicorn(rest.config, self._limits)
        rest.config.host = limits.bind_host() or rest.config.host
        # uvicorn's per-request access log line is a measured hot-path cost (it decides per
        # connection from `hasHandlers()`); opt back in with kserve's --access_log_format.
        if not self.access_log_format:
            access = logging.getLogger("uvicorn.access")
            access.handlers = []
            access.propagate = False
        self._rest_server = rest
        self.servers.append(rest.start())
        if self.enable_grpc:
            grpc_server = self._grpc_server_class(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={**vars(self._args), "max_request_bytes": self._limits.max_request_bytes},
                grace_period=self.grace_period,
            )
            grpc_server.grpc_hooks = self._grpc_hooks
            self._grpc_server = grpc_server
            self.servers.append(grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def check_workers(args: argparse.Namespace, component: str, refuse: bool) -> None:
    """Refuse (predictor) or override with a warning (transformer, where the KServe controller
    appends `--workers <containerConcurrency>` itself) any `--workers` above 1."""
    workers = getattr(args, "workers", 1) or 1
    if workers <= 1:
        return
    message = (
        f"--workers {workers} is not supported by the kbundle {component}: kserve 0.21 pickles the "
        "model into spawned worker processes, which engine sessions and predictor settings do not "
        "survive. Scale with replicas (minReplicas/maxReplicas) instead."
    )
    if refuse:
        raise SystemExit(f"error: {message}")
    logger.warning("%s Serving with 1 worker.", message)
    args.workers = 1
