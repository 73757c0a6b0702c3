"""The hop from the transformer to the predictor: V2 over gRPC (default) or REST binary.

One long-lived channel / connection pool per process, created on the serving event loop at the
first request. Tensors travel as raw bytes both ways (gRPC raw_input_contents, REST binary
extension), never as JSON lists. Connect failures and UNAVAILABLE/503 are retried a bounded
number of times (an inference is idempotent); the predictor's own answer keeps its status: a 4xx
comes back as the same 4xx with the predictor's message, an outage is a 503, a timeout a 504,
and no predictor fault becomes a bare 500.

A request's deadline (its gRPC deadline, V2 `timeout` parameter or x-request-timeout-ms header,
see kbundle.serving.limits) travels on: each try's timeout is what is left of it (at most the
configured hop timeout), sent as the gRPC deadline or the timeout header, so the predictor drops
the request unrun when it expires in its queue; a hop past it is a 504 / DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kbundle.errors import (
    DeadlineExceeded,
    InvalidRequest,
    KBundleError,
    ModelUnavailable,
    Status,
    UpstreamTimeout,
)
from kbundle.retry import RetryExhausted, RetryPolicy, retry_async
from kbundle.status import is_server_fault

logger = logging.getLogger("kbundle.transformer.hop")

FORWARD_HEADERS = frozenset({"x-request-id", "traceparent", "tracestate", "authorization", "b3"})
FORWARD_PREFIXES = ("x-b3-",)
RETRY_BACKOFF_S = 0.05

T = TypeVar("T")


def forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers the predictor should see: request id, trace context, credentials."""
    out = {}
    for key, value in headers.items():
        name = key.lower()
        if name in FORWARD_HEADERS or name.startswith(FORWARD_PREFIXES):
            out[name] = value
    return out


class PredictorError(KBundleError):
    """The predictor answered with an error: carries the predictor's status (kbundle.status
    read it from the predictor's gRPC code or HTTP status) and message."""


def upstream_error(where: str, status: Status, details: str, timeout_s: float) -> KBundleError:
    """The transformer's answer for a predictor's error status: a client fault keeps its status
    and message, an outage is UNAVAILABLE (503), a timeout DEADLINE_EXCEEDED (504), and any other
    predictor fault a BAD_GATEWAY (502), never a bare 500."""
    if status is Status.UNAVAILABLE:
        return ModelUnavailable(f"{where} is unavailable: {details}")
    if status is Status.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"{where} did not answer within {timeout_s:g} s")
    if status is Status.INVALID_ARGUMENT:
        return InvalidRequest(f"{where}: {details}")
    if is_server_fault(status) and status is not Status.UNIMPLEMENTED:
        status = Status.BAD_GATEWAY
    return PredictorError(f"{where}: {details}", status)


@dataclass(frozen=True)
class HopConfig:
    host: str  # host:port of the predictor
    protocol: str  # grpc-v2 | v2
    model_name: str  # the model's name at the predictor (empty: decided by the transformer's spec)
    timeout_s: float = 60.0
    retries: int = 2
    use_ssl: bool = False
    max_message_bytes: int = 64 * 1024 * 1024

    @property
    def where(self) -> str:
        return f"predictor '{self.model_name}' at {self.host}"


@dataclass(frozen=True)
class HopRequest:
    """One inference on the hop; `headers` are already the forwardable ones."""

    request_id: str
    inputs: Mapping[str, np.ndarray]
    outputs: list[str]
    headers: dict[str, str]
    deadline: float | None = None  # time.monotonic() after which no one waits for the answer


class Hop(ABC):
    """Sends the predictor tensors; returns the predictor's outputs as numpy arrays."""

    def __init__(self, config: HopConfig):
        self.config = config
        # The predictor's V2 model_version, as its latest answer said (one predictor per hop, so
        # it changes only when the predictor behind this transformer is replaced).
        self.model_version = ""

    async def infer(
        self,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        headers: Mapping[str, str],
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The predictor's outputs for `inputs`; `headers` are the client's (only the forwardable
        ones travel); `deadline` (time.monotonic()) bounds the hop and travels with it."""
        sent = HopRequest(request_id, inputs, outputs, forwardable(headers), deadline)
        return await self._send(sent)

    def budget_s(self, request: HopRequest) -> float:
        """Seconds one try may take: the configured timeout, or what is left of the request's
        deadline when that is less. DeadlineExceeded when nothing is left (not sent at all)."""
        if request.deadline is None:
            return self.config.timeout_s
        left = request.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"{self.config.where}: the request's deadline passed before the predictor answered"
            )
        return min(left, self.config.timeout_s)

    @abstractmethod
    async def _send(self, request: HopRequest) -> dict[str, np.ndarray]: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def _with_retries(
        self, call: Callable[[], Awaitable[T]], retryable: Callable[[Exception], bool]
    ) -> T:
        """`call()` with up to `retries` more tries on a retryable failure, backing off 50, 100, ... ms
        (kbundle.retry); when they run out, the last failure propagates as it was."""
        policy = RetryPolicy(attempts=self.config.retries + 1, first_delay_s=RETRY_BACKOFF_S)

        def log(attempt: int, exc: BaseException, _delay: float) -> None:
            logger.warning("%s: attempt %d failed (%s); retrying", self.config.where, attempt, exc)

        try:
            return await retry_async(call, policy, retryable, on_retry=log)
        except RetryExhausted as exhausted:
            last = exhausted.last
            last.__suppress_context__ = True
            raise last  # noqa: B904 - the callers map the transport's own error


def checked_decode(where: str, decode: Callable[[], T]) -> T:
    """A response the transformer cannot read is the predictor's fault: 502, not the client's 400."""
    try:
        return decode()
    except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{where}: unreadable response ({exc})", Status.BAD_GATEWAY) from None


def make_hop(config: HopConfig) -> Hop:
    """The hop for the configured protocol (imported here: each transport imports this module)."""
    if config.protocol == "grpc-v2":
        from kbundle.transformers.hop_grpc import GrpcHop

        return GrpcHop(config)
    if config.protocol == "v2":
        from kbundle.transformers.hop_rest import RestHop

        return RestHop(config)
    raise ValueError(f"unsupported predictor protocol {config.protocol!r}")
