"""Start-up port checks and the graceful drain on SIGTERM, for the predictor and transformer.

Drain (Kubernetes sends SIGTERM on every rolling update, scale-down and node drain): readiness
reports false at once (so KServe/Knative stop routing), the gRPC server stops taking new calls
and the REST route refuses new infer calls (its listener stays up so probes read not-ready),
every call already received is answered (queued or running), and only then are the servers
closed and the models unloaded. The whole drain is bounded by `--drain_timeout_seconds`, which
must stay below the pod's `terminationGracePeriodSeconds` (KServe's default is 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import socket
import time

from kbundle.serving import limits

logger = logging.getLogger("kbundle.server")

DEFAULT_DRAIN_TIMEOUT_S = 25.0
POLL_S = 0.01


def add_drain_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drain_timeout_seconds",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="On SIGTERM, how long in-flight calls may take to finish before the server exits "
        "(keep it below the pod's terminationGracePeriodSeconds, 30 s by default).",
    )


def freeze_startup_heap() -> None:
    """Move everything start-up built (kserve, FastAPI, protobuf, the engine's Python objects)
    out of the cyclic collector's reach. A full (gen2) collection over that heap stops the event
    loop for tens of milliseconds (bench/results/gc_pause.md), every few seconds under load, and
    every refusal and deadline answer waiting on the loop pays it. Afterwards a full collection
    walks only objects made since; cycles among them are still collected."""
    gc.collect()
    gc.freeze()


def port_in_use(protocol: str, port: int, flag: str) -> SystemExit:
    return SystemExit(
        f"error: {protocol} port {port} is in use by another process (choose another with {flag})"
    )


def bind_rest_socket(port: int, host: str = "0.0.0.0") -> socket.socket:
    """The REST listening socket, bound and listening now: a port in use is refused at once
    (without SO_REUSEPORT, so a second server cannot share it)."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP; without it Nagle + delayed ACK add ~40 ms to every small response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, as uvicorn
    _bind_or_refuse(sock, (host, port), listen=True, protocol="REST", flag="--http_port")
    sock.set_inheritable(True)
    return sock


def _bind_or_refuse(
    sock: socket.socket, address: tuple, listen: bool, protocol: str, flag: str
) -> None:
    """Bind (and listen); a port in use is the one-line start-up error naming the flag."""
    try:
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise port_in_use(protocol, address[1], flag) from None
        raise


def bind_grpc_socket(port: int, reuseport: bool, listen: bool = True) -> socket.socket:
    """The gRPC listening socket on kserve's address (all interfaces, IPv4 and IPv6, unless
    KBUNDLE_BIND_HOST says otherwise). SO_REUSEPORT only where our own `--workers` share it."""
    host = limits.bind_host()
    family = socket.AF_INET if host and ":" not in host else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuseport))
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    _bind_or_refuse(sock, (host or "::", port), listen, protocol="gRPC", flag="--grpc_port")
    return sock


async def wait_idle(inflight: callable, deadline: float) -> bool:
    """Wait until `inflight()` is 0 or the monotonic deadline passes; True when idle."""
    while inflight() > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True
