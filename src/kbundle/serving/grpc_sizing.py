"""How gRPC is sized: calls held at once (the lean server's admission bound, kbundle.serving.
grpc_lean) and, for grpcio's sync server (KBUNDLE_GRPC_SERVER=sync), its handler threads and pool."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent import futures

from kbundle.cpu_budget import cpu_budget
from kbundle.serving.grpc_pool import HandlerPool

# gRPC handler threads: each in-flight ModelInfer holds one while its batch runs, so they cap
# how many calls the batcher can see. A batched model gets enough for one batch running and one
# filling on each engine instance (with 16 threads, 32 text requests over 4 padding buckets made
# ~4.6 rows per call, with 64 ~7.8: bench/padding.py); threads waiting for a result cost memory,
# not CPU. At least 16 per CPU of the budget (kbundle.cpu_budget). kserve's --max_threads or
# KBUNDLE_GRPC_THREADS set it.
GRPC_THREADS_ENV = "KBUNDLE_GRPC_THREADS"
GRPC_THREADS_PER_CPU = 16


def grpc_threads(settings: Sequence[object] = ()) -> int:
    """`settings`: the served models' ModelSettings (anything with their attributes)."""
    if GRPC_THREADS_ENV in os.environ:
        return int(os.environ[GRPC_THREADS_ENV])
    batches = [2 * _get(s, "max_batch_size") * max(1, _get(s, "instances")) for s in settings]
    return max([GRPC_THREADS_PER_CPU * cpu_budget().threads, *batches])


def _get(settings: object, name: str) -> int:
    return getattr(settings, name, 0) or 0


# Calls held at once (running + waiting for a handler thread): one more is refused by grpcio's own
# poll thread with RESOURCE_EXHAUSTED before anything is read or decoded, at a cost of
# microseconds. The bound is the handler threads plus the largest `max_queue_size` of the served
# models (calls waiting for a thread are that model's queue); none when a model's queue is
# unbounded (0). KBUNDLE_GRPC_MAX_CALLS overrides it.
GRPC_MAX_CALLS_ENV = "KBUNDLE_GRPC_MAX_CALLS"


def grpc_max_calls(threads: int, settings: Sequence[object]) -> int | None:
    if GRPC_MAX_CALLS_ENV in os.environ:
        return int(os.environ[GRPC_MAX_CALLS_ENV]) or None
    sizes = [_get(s, "max_queue_size") for s in settings]
    if not sizes or 0 in sizes:
        return None
    return threads + max(sizes)


# For A/B benchmarks only (bench/grpc_ab.py, bench/overload.py): the gRPC server ("sync" or
# "aio") and the sync server's handler pool ("lifo": HandlerPool, "fifo": a stock executor).
GRPC_SERVER_ENV = "KBUNDLE_GRPC_SERVER"
GRPC_POOL_ENV = "KBUNDLE_GRPC_POOL"


def handler_pool(threads: int) -> futures.Executor:
    if os.environ.get(GRPC_POOL_ENV, "lifo") == "fifo":
        return futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc")
    return HandlerPool(threads)
