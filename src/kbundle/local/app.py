"""`kbundle up` as one asyncio program: reconcile, serve both ingress ports, drain on a signal.

Order on SIGTERM/Ctrl-C: the ingress stops taking new connections and RPCs, requests already in
flight finish (bounded by the drain timeout), then every child gets SIGTERM (SIGKILL after its
grace). A second Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from kbundle.errors import ConfigError
from kbundle.local.ingress_grpc import build_server
from kbundle.local.ingress_rest import RestIngress
from kbundle.local.runtime import RuntimeOptions
from kbundle.local.service import LocalService
from kbundle.serving.http_guard import BodyLimit, apply_to_uvicorn
from kbundle.serving.limits import HttpLimits, tune_malloc

logger = logging.getLogger("kbundle.up")
UP_FILE = "up.json"


@dataclass(frozen=True)
class UpOptions:
    manifest: Path
    host: str
    port: int
    grpc_port: int
    runtime: RuntimeOptions
    watch_interval_s: float = 1.0
    drain_timeout_s: float = 30.0
    progress_deadline_s: float = 120.0


class PortInUse(ConfigError):
    pass


def bind_rest(host: str, port: int) -> socket.socket:
    """The REST listening socket, or PortInUse naming the port and the flag to change it."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it keep-alive clients wait ~40 ms per response (Nagle against delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(_port_message(host, port, "--port", exc)) from exc
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


def check_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(_port_message(host, port, flag, exc)) from exc


def _port_message(host: str, port: int, flag: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another kbundle up or server?); pick a free one with {flag}"
    return f"cannot listen on {host}:{port}: {exc.strerror}; pick another with {flag}"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this program decides when to drain."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(options: UpOptions) -> int:
    rest_sock = bind_rest(options.host, options.port)
    check_free(options.host, options.grpc_port, "--grpc-port")
    state_dir = options.runtime.state_dir
    service = LocalService(
        options.manifest, options.runtime, options.progress_deadline_s, options.drain_timeout_s
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = _install_signals(loop, stop, service)
    service.scrape_ingress = f"{options.host}:{options.port}"  # Prometheus file_sd (docs/canary.md)
    try:
        if not await service.apply():
            print(f"error: {service.last_error}", file=sys.stderr, flush=True)
            return 1
        return await _serve_ingress(options, service, rest_sock, stop, signals)
    finally:
        await service.shutdown()
        logger.info("all components stopped")
        rest_sock.close()
        with contextlib.suppress(FileNotFoundError):
            (state_dir / UP_FILE).unlink()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve_ingress(
    options: UpOptions,
    service: LocalService,
    rest_sock: socket.socket,
    stop: asyncio.Event,
    signals: list[int],
) -> int:
    rest = RestIngress(service)
    limits = HttpLimits.from_env()  # the same body/header limits as the components
    tune_malloc()
    config = uvicorn.Config(
        BodyLimit(rest, limits.max_request_bytes),
        server_header=False,  # the upstream's Server/Date headers pass through instead
        date_header=False,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=int(options.drain_timeout_s),
        timeout_keep_alive=65,
    )
    apply_to_uvicorn(config, limits)
    http = _Uvicorn(config)
    grpc_server = build_server(service, options.host, options.grpc_port)
    await grpc_server.start()
    http_task = asyncio.create_task(http.serve(sockets=[rest_sock]))
    service.start_background(options.watch_interval_s)
    _write_up_file(options, service)
    print(
        f"kbundle up: {service.spec.name} is serving V2 REST on http://{options.host}:{options.port} "
        f"and gRPC on {options.host}:{options.grpc_port} (status: kbundle status; logs: "
        f"{options.runtime.state_dir / 'logs'})",
        flush=True,
    )
    await stop.wait()
    logger.info(
        "signal %s: draining in-flight requests (up to %.0fs)",
        signals[-1] if signals else "?",
        options.drain_timeout_s,
    )
    http.should_exit = True
    await asyncio.gather(grpc_server.stop(options.drain_timeout_s), http_task)
    await rest.close()
    logger.info("drained; stopping components")
    return 0


def _install_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, service: LocalService
) -> list[int]:
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        if stop.is_set():
            logger.warning("second signal: killing the components and exiting without draining")
            service.kill_now()
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return received


def _write_up_file(options: UpOptions, service: LocalService) -> None:
    from kbundle.local.revisions import write_json_atomic

    write_json_atomic(
        options.runtime.state_dir / UP_FILE,
        {
            "pid": os.getpid(),
            "isvc": service.spec.name,
            "manifest": str(options.manifest.resolve()),
            "host": options.host,
            "port": options.port,
            "grpc_port": options.grpc_port,
        },
    )


def read_up_file(state_dir: Path) -> dict | None:
    path = Path(state_dir) / UP_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    try:
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None  # left over from a run that was killed
    return data
