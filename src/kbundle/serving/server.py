"""kserve.ModelServer with our V2 routes, our gRPC servicer and one error model.

Everything else (health, metadata, metrics, V1, repository extension) stays kserve's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc import aio
from kserve import Model, ModelServer
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.server import RESTServer

from kbundle.cpu_budget import cpu_budget
from kbundle.serving import http_guard, limits, metrics
from kbundle.serving.core import RequestCore
from kbundle.serving.grpc_lean import KbundleLeanGRPCServer
from kbundle.serving.grpc_sizing import GRPC_SERVER_ENV, grpc_max_calls, grpc_threads, handler_pool
from kbundle.serving.grpc_sync import SERVICE, LoopBridge, bridge_generic, v2_handlers
from kbundle.serving.lifecycle import (
    bind_rest_socket,
    freeze_startup_heap,
    port_in_use,
    wait_idle,
)
from kbundle.serving.loop_lag import LoopLagProbe
from kbundle.serving.rest_lean import LeanRestProtocol
from kbundle.serving.rest_routes import register_error_handlers
from kbundle.serving.v2_grpc import ArrayServicer, StatusInterceptor

logger = logging.getLogger("kbundle.server")


def loop_executor_workers(max_asyncio_workers: int | None) -> int:
    """The event loop's default executor (decode work, kserve's sync calls): kserve's flag, else
    sized from the CPU budget as Python sizes it from the host (cpus + 4)."""
    return max_asyncio_workers or min(32, cpu_budget().threads + 4)


def serving_loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """kserve's `--event_loop`: "auto" (its default) is uvloop where installed, as kserve and
    uvicorn read it; None = asyncio's own loop. (ModelServer.start ran asyncio.run, which
    ignored the flag: uvloop halves the loop's own cost per call.)"""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def no_signal_capture() -> contextlib.AbstractContextManager:
    """uvicorn captures SIGTERM itself and re-raises it after its own shutdown; the model
    server's drain (KbundleModelServer) owns the signals instead."""
    return contextlib.nullcontext()


# Extra routes/handlers a component adds (e.g. the model-configuration extension).
RestHook = Callable[["KbundleRESTServer"], None]
GrpcHook = Callable[["KbundleGRPCServer"], Sequence[grpc.GenericRpcHandler]]


class KbundleRESTServer(RESTServer):
    rest_hooks: Sequence[RestHook] = ()
    http_limits: limits.HttpLimits | None = None
    core: RequestCore
    sock: socket.socket  # bound before serving (kbundle.serving.lifecycle.bind_rest_socket)

    def create_application(self) -> None:
        from kserve.model_server import app

        # kserve 0.21's app uses FastAPI's deprecated ORJSONResponse as its default response class:
        # without this, every start logs a FastAPI deprecation warning that is not ours to fix.
        warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
        for hook in self.rest_hooks:
            hook(self)
        super().create_application()
        register_error_handlers(app)
        # V2 infer never reaches the app: the HTTP protocol serves it (kbundle.serving.rest_lean).
        if self.http_limits is not None:  # outermost: a body over the limit is never read
            app.add_middleware(http_guard.BodyLimit, limit=self.http_limits.max_request_bytes)

    async def start(self) -> None:
        self.create_application()
        freeze_startup_heap()  # models are loaded and the app built: what serving keeps for good
        self._server.capture_signals = no_signal_capture
        await self._server.serve(sockets=[self.sock])

    def stop_accepting(self, timeout_s: float) -> None:
        """Close the listener and finish: uvicorn waits up to `timeout_s` for open requests
        (what is left of the drain), then cancels them and runs the app's shutdown."""
        self._server.config.timeout_graceful_shutdown = max(0.1, timeout_s)
        self._server.should_exit = True

    def _add_middlewares(self, app) -> None:
        """kserve's, minus TimingMiddleware: it logs a line per request (measured hot-path cost)
        and duplicates what /metrics already records. `--access_log_format` still works."""
        if self.access_log_format:
            super()._add_middlewares(app)


class KbundleGRPCServer(GRPCServer):
    """kserve's V2 gRPC service on grpcio's sync server (kbundle.serving.grpc_sync says why)."""

    grpc_hooks: Sequence[GrpcHook] = ()
    core: RequestCore

    def bind(self, max_workers: int) -> None:
        """Build the server and bind its port now, before anything serves: a port in use is
        refused (SO_REUSEPORT off, so a second predictor cannot silently share it)."""
        self._bridge = LoopBridge(None)  # the loop is set when serving starts
        servicer = ArrayServicer(self._data_plane, self._model_repository_extension, self.core)
        self._threads = max(max_workers or 0, grpc_threads(self._served_settings()))
        # No interceptors: errors are mapped inside each handler (grpc_sync.abort_mapped), and
        # kserve's LoggingInterceptor logs a line per call (~0.45 ms CPU per request,
        # bench/results/transformer_hop.md); errors are still logged.
        # Adaptive LIFO, expired calls dropped unrun (kbundle.serving.grpc_pool says why).
        self._server = grpc.server(
            handler_pool(self._threads),
            options=grpc_options(self._kwargs),
            maximum_concurrent_rpcs=grpc_max_calls(self._threads, self._served_settings()),
        )
        handlers = v2_handlers(servicer, self._bridge, self.core)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self._server.add_registered_method_handlers(SERVICE, handlers)
        for hook in self.grpc_hooks:
            self._server.add_generic_rpc_handlers(bridge_generic(hook(self), self._bridge))
        add_port(self._server, self._port)

    def _served_settings(self) -> list[object]:
        models = self._data_plane.model_registry.get_models().values()
        return [m.settings for m in models if hasattr(m, "settings")]

    async def start(self, max_workers: int) -> None:
        self._stopped = asyncio.Event()
        self._bridge.loop = asyncio.get_running_loop()
        self._server.start()
        logger.info(
            "gRPC V2 on port %s (%d threads, at most %s calls held)",
            self._port,
            self._threads,
            grpc_max_calls(self._threads, self._served_settings()),
        )
        await self._stopped.wait()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls, let accepted ones (running or waiting for a thread) finish."""
        if self._server is None:
            return
        done = self._server.stop(grace=timeout_s)
        # Handlers still in flight need this loop to finish: wait off the loop.
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        self._stopped.set()


def grpc_options(kwargs: dict) -> list[tuple[str, object]]:
    return [
        ("grpc.so_reuseport", 1 if kwargs.get("share_ports") else 0),  # only our --workers share
        ("grpc.max_send_message_length", kwargs.get("grpc_max_send_message_length")),
        # kbundle's max_request_bytes when set (the same limit as REST bodies), else kserve's flag
        (
            "grpc.max_receive_message_length",
            kwargs.get("max_request_bytes") or kwargs.get("grpc_max_receive_message_length"),
        ),
    ]


def add_port(server: grpc.Server | aio.Server, port: int) -> None:
    try:
        bound = server.add_insecure_port(limits.grpc_address(port))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise port_in_use("gRPC", port, "--grpc_port")


class KbundleAioGRPCServer(GRPCServer):
    """kserve's V2 gRPC service on grpc.aio, for components whose work is all on the event loop
    (the transformer: its hop is an async client). The sync server would add two thread hops per
    call there; for the predictor, whose batcher takes requests from any thread, it is faster."""

    grpc_hooks: Sequence[GrpcHook] = ()

    core: RequestCore

    async def start(self, max_workers: int) -> None:
        servicer = ArrayServicer(self._data_plane, self._model_repository_extension, self.core)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # No kserve LoggingInterceptor: its INFO line per call cost ~0.45 ms CPU per request.
            interceptors=(StatusInterceptor(),),
            options=grpc_options(self._kwargs),
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        for hook in self.grpc_hooks:
            self._server.add_generic_rpc_handlers(tuple(hook(self)))
        add_port(self._server, self._port)
        logger.info("gRPC V2 on port %s (grpc.aio)", self._port)
        await self._server.start()
        await self._server.wait_for_termination()

    def bind(self, max_workers: int) -> None:
        """grpc.aio servers belong to the serving loop: bound in `start`."""

    async def drain(self, timeout_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace=timeout_s)


GRPC_SERVERS: dict[str, type[GRPCServer]] = {
    "lean": KbundleLeanGRPCServer,
    "sync": KbundleGRPCServer,
    "aio": KbundleAioGRPCServer,
}


class KbundleModelServer(ModelServer):
    """ModelServer that serves one process (kserve's `--workers > 1` pickles the model into
    spawned children, which an engine session cannot survive, KSERVE_NOTES §1), with one
    request core for both transports and a graceful drain on SIGTERM (kbundle.serving.lifecycle)."""

    def __init__(
        self,
        args: argparse.Namespace,
        rest_hooks: Sequence[RestHook] = (),
        grpc_hooks: Sequence[GrpcHook] = (),
        grpc_server: str = "lean",
        http_limits: limits.HttpLimits | None = None,
    ):
        self._grpc_server_class = GRPC_SERVERS[os.environ.get(GRPC_SERVER_ENV, grpc_server)]
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
        self.drain_timeout_s = float(getattr(args, "drain_timeout_seconds", 25.0))
        self.grace_period = max(1, int(self.drain_timeout_s))
        self.core = RequestCore(self.dataplane.model_registry)
        self._drain_task: asyncio.Task | None = None

    def start(self, models: list[Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        for model in models:
            metrics.prime(model.name)
        limits.tune_malloc()
        rest = self._rest(self._rest_socket())
        self._rest_server = rest
        if self.enable_grpc:
            self._grpc_server = self._grpc()
            self._grpc_server.bind(self.max_threads)
        self.servers.append(rest.start())
        if self.enable_grpc:
            self.servers.append(self._grpc_server.start(self.max_threads))
        with asyncio.Runner(loop_factory=serving_loop_factory(self.event_loop)) as runner:
            runner.run(self._serve())

    def _rest_socket(self) -> socket.socket:
        """Bound here; a `--workers` front end serves the one its supervisor bound instead."""
        return bind_rest_socket(self.http_port, limits.bind_host() or "0.0.0.0")

    def _rest(self, sock: socket.socket) -> KbundleRESTServer:
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
        rest.rest_hooks, rest.core, rest.sock = self._rest_hooks, self.core, sock
        rest.http_limits = self._limits
        http_guard.apply_to_uvicorn(rest.config, self._limits, LeanRestProtocol, core=self.core)
        # uvicorn's per-request access log line is a measured hot-path cost (it decides per
        # connection from `hasHandlers()`); opt back in with kserve's --access_log_format.
        if not self.access_log_format:
            access = logging.getLogger("uvicorn.access")
            access.handlers = []
            access.propagate = False
        return rest

    def _grpc(self) -> GRPCServer:
        server = self._grpc_server_class(
            self.grpc_port,
            self.dataplane,
            self.model_repository_extension,
            kwargs={
                **vars(self._args),
                "max_request_bytes": self._limits.max_request_bytes,
                "http_limits": self._limits,
            },
            grace_period=self.grace_period,
        )
        server.grpc_hooks, server.core = self._grpc_hooks, self.core
        return server

    def register_signal_handler(self) -> None:
        """Signals are handled on the serving loop (`_serve`), by the drain."""

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.core.loop = loop
        loop.set_exception_handler(self.default_exception_handler)
        loop.set_default_executor(
            futures.ThreadPoolExecutor(max_workers=loop_executor_workers(self.max_asyncio_workers))
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        lag = LoopLagProbe(loop).start()
        await asyncio.gather(*self.servers)
        lag.stop()
        self._unload()

    def _on_signal(self, sig: int) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        logger.info(
            "%s: draining (not ready; up to %gs for %d calls in flight)",
            signal.Signals(sig).name,
            self.drain_timeout_s,
            self.core.inflight,
        )
        self.core.draining = True
        for model in self.registered_models.get_models().values():
            model.ready = False  # readiness probes fail at once; accepted calls still served
        grpc_drain = None
        if self._grpc_server is not None:
            grpc_drain = asyncio.ensure_future(self._grpc_server.drain(self.drain_timeout_s))
        idle = await wait_idle(lambda: self.core.inflight, deadline)
        if not idle:
            self.core.cancel_inflight()
        if grpc_drain is not None:
            await grpc_drain
        logger.info(
            "drain %s; %d calls left", "complete" if idle else "timed out", self.core.inflight
        )
        self._rest_server.stop_accepting(deadline - time.monotonic())

    def _unload(self) -> None:
        """After both servers stopped: nothing can reach the engines any more."""
        for name in list(self.registered_models.get_models()):
            self.registered_models.unload(name)
        logger.info("models unloaded; exiting")


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
