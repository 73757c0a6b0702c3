"""Request limits shared by the predictor, the transformer and `kbundle up`'s ingress.

- `max_request_bytes` (env KBUNDLE_MAX_REQUEST_BYTES): default derived from the container's memory
  (a quarter of the cgroup memory limit, at most 1 GiB), else 64 MiB. REST bodies are refused
  on their Content-Length or, without one, while the body streams in (counted in the ASGI
  receive loop, never buffered whole); gRPC messages by `grpc.max_receive_message_length`.
- Deadlines: the V2 `timeout` parameter (microseconds, as Triton reads it) or the
  `x-request-timeout-ms` header, whichever is earlier (gRPC deadlines cancel the call themselves).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kbundle.errors import ConfigError, InvalidRequest

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


# -- HTTP limits -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpLimits:
    """What every HTTP server here enforces (kbundle.serving.http_guard). Env names in ENV."""

    max_request_bytes: int
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024

    ENV: ClassVar[dict[str, str]] = {
        "max_header_bytes": "KBUNDLE_MAX_HEADER_BYTES",
        "max_headers": "KBUNDLE_MAX_HEADERS",
        "header_timeout_s": "KBUNDLE_HEADER_TIMEOUT_S",
        "body_timeout_s": "KBUNDLE_BODY_TIMEOUT_S",
        "max_connections": "KBUNDLE_MAX_CONNECTIONS",
    }

    @classmethod
    def from_env(cls, request_bytes: int | None = None) -> HttpLimits:
        """Defaults, overridden by the env vars in ENV; body limit from `max_request_bytes`."""
        values: dict = {}
        for name, env in cls.ENV.items():
            text = os.environ.get(env)
            if text:
                kind = float if name.endswith("_s") else int
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise ConfigError(
                        f"env {env}: cannot read {text!r} as {kind.__name__}"
                    ) from None
        return cls(max_request_bytes=max_request_bytes(request_bytes), **values)

    def header_setting(self, why: str) -> str:
        return self.ENV["max_headers" if "headers" in why.split()[-1] else "max_header_bytes"]


# -- deadlines ---------------------------------------------------------------------------------
def request_deadline(
    parameters: Mapping[str, Any], headers: Mapping[str, str], since: float | None = None
) -> float | None:
    """The earlier of the V2 `timeout` parameter (µs) and the timeout header (ms), as an absolute
    time.monotonic() counted from `since` (when the request's head arrived; now if not given):
    the time spent reading and decoding a large body is part of the client's budget. None when
    the request has neither. (The gRPC codec adds the call's own deadline:
    kbundle.serving.v2_grpc.grpc_deadline.)"""
    budgets: list[float] = []
    micros = parameters.get(TIMEOUT_PARAMETER) if parameters else None
    if micros is not None:
        if isinstance(micros, bool) or not isinstance(micros, int) or micros <= 0:
            raise InvalidRequest(
                f"request parameter '{TIMEOUT_PARAMETER}' must be a positive integer of "
                f"microseconds, got {micros!r}"
            )
        budgets.append(micros / 1e6)
    millis = headers.get(TIMEOUT_HEADER) if headers else None
    if millis is not None:
        try:
            budgets.append(float(millis) / 1e3)
        except ValueError:
            raise InvalidRequest(
                f"header {TIMEOUT_HEADER} must be a number of milliseconds, got {millis!r}"
            ) from None
    if not budgets:
        return None
    return (time.monotonic() if since is None else since) + min(budgets)


# -- memory return -----------------------------------------------------------------------------
# glibc raises its mmap threshold to the size of each freed mmapped block (up to 32 MiB), after
# which large request buffers come from the heap and stay resident when freed. A fixed threshold
# keeps buffers of 1 MiB and up in their own mappings, unmapped on free; malloc_trim after a large
# request hands back what small allocations (JSON decoding) left in the heap.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024
TRIM_AFTER_BYTES = 8 * 1024 * 1024


def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def tune_malloc() -> None:
    """Fix glibc's mmap threshold (no-op off glibc); call once at server start."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_after(nbytes: int) -> None:
    """Return freed heap memory to the OS after a request of `nbytes` (only large ones)."""
    if _LIBC is not None and nbytes >= TRIM_AFTER_BYTES:
        _LIBC.malloc_trim(0)
