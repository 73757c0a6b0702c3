"""Request limits shared by the predictor, the transformer and `kbundle up`'s ingress.

- `max_request_bytes` (env KBUNDLE_MAX_REQUEST_BYTES): default derived from the container's memory
  (a quarter of the cgroup memory limit, at most 1 GiB), else 64 MiB. REST bodies are refused
  on their Content-Length or, without one, while the body streams in (counted in the ASGI
  receive loop, never buffered whole); gRPC messages by `grpc.max_receive_message_length`.
- Deadlines: the V2 `timeout` parameter (microseconds, as Triton reads it), the
  `x-request-timeout-ms` header, or the gRPC deadline, whichever is earliest.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT_ENV = "KBUNDLE_CGROUP_ROOT"
MAX_REQUEST_BYTES_ENV = "KBUNDLE_MAX_REQUEST_BYTES"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_DERIVED_REQUEST_BYTES = 1024 * 1024 * 1024
TIMEOUT_HEADER = "x-request-timeout-ms"
TIMEOUT_PARAMETER = "timeout"  # V2 request parameter, microseconds
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number


def cgroup_memory_limit(root: str | None = None) -> int | None:
    """This container's memory limit in bytes (cgroup v2 memory.max, else v1
    memory.limit_in_bytes), or None when there is none. Root: env KBUNDLE_CGROUP_ROOT, else
    /sys/fs/cgroup."""
    base = Path(root or os.environ.get(CGROUP_ROOT_ENV) or "/sys/fs/cgroup")
    for path in (base / "memory.max", base / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _NO_LIMIT:
            return None
        return int(text)
    return None


def max_request_bytes(configured: int | None = None) -> int:
    """The body/message limit: `configured` (> 0), env KBUNDLE_MAX_REQUEST_BYTES, else derived."""
    if configured and configured > 0:
        return configured
    env = os.environ.get(MAX_REQUEST_BYTES_ENV)
    if env:
        return int(env)
    limit = cgroup_memory_limit()
    if limit:
        return min(limit // 4, MAX_DERIVED_REQUEST_BYTES)
    return DEFAULT_MAX_REQUEST_BYTES


# -- bind address ------------------------------------------------------------------------------
# kserve 0.21 hard-codes every interface (uvicorn host "0.0.0.0" in kserve/protocol/rest/server.py,
# "[::]:port" for gRPC). Containers keep that (the pod network needs it); `kbundle up` sets
# KBUNDLE_BIND_HOST=127.0.0.1 for its components so a laptop does not serve its LAN.
BIND_HOST_ENV = "KBUNDLE_BIND_HOST"


def bind_host() -> str | None:
    """The interface to listen on, or None for kserve's default (all interfaces)."""
    return os.environ.get(BIND_HOST_ENV) or None


def grpc_address(port: int) -> str:
    host = bind_host()
    if host is None:
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
