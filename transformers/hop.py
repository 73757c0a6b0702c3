"""The hop from the transformer to the predictor: V2 over gRPC (default) or REST binary.

One long-lived channel / connection pool per process, created on the serving event loop at the
first request. Tensors travel as raw bytes both ways (gRPC raw_input_contents, REST binary
extension), never as JSON lists. Connect failures and UNAVAILABLE/503 are retried a bounded
number of times (an inference is idempotent); the predictor's own answer keeps its status: a 4xx
comes back as the same 4xx with the predictor's message, an outage is a 503, a timeout a 504,
and no predictor fault becomes a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar

import aiohttp
import grpc
import numpy as np
import orjson
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from kbundle.errors import InvalidRequest, KbundleError, ModelUnavailable, UpstreamTimeout
from kbundle.serving.v2_grpc import CONTENTS_FIELD
from kbundle.serving.v2_rest import HEADER_LENGTH
from kbundle.specs import v2_datatype
from kbundle.tensors import array_from_list, array_from_raw, raw_from_array

logger = logging.getLogger("kbundle.transformer.hop")

# Headers that carry identity and tracing across the hop (lower case, as both transports give them).
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


class PredictorError(KbundleError):
    """The predictor answered with an error: carries the predictor's status and message."""

    def __init__(self, message: str, http_status: HTTPStatus, grpc_code: grpc.StatusCode):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


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


class Hop(ABC):
    """Sends the predictor tensors; returns the predictor's outputs as numpy arrays."""

    def __init__(self, config: HopConfig):
        self.config = config

    @abstractmethod
    async def infer(
        self,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        headers: Mapping[str, str],
    ) -> dict[str, np.ndarray]: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def _with_retries(
        self, call: Callable[[], Awaitable[T]], retryable: Callable[[Exception], bool]
    ) -> T:
        """`call()` with up to `retries` more tries on a retryable failure, backing off 50, 100, ... ms."""
        for attempt in range(self.config.retries + 1):
            try:
                return await call()
            except Exception as exc:
                if attempt == self.config.retries or not retryable(exc):
                    raise
                logger.warning(
                    "%s: attempt %d failed (%s); retrying", self.config.where, attempt + 1, exc
                )
                await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")


def _checked(where: str, decode: Callable[[], T]) -> T:
    """A response the transformer cannot read is the predictor's fault: 502, not the client's 400."""
    try:
        return decode()
    except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(
            f"{where}: unreadable response ({exc})",
            HTTPStatus.BAD_GATEWAY,
            grpc.StatusCode.INTERNAL,
        ) from None


def make_hop(config: HopConfig) -> Hop:
    if config.protocol == "grpc-v2":
        return GrpcHop(config)
    if config.protocol == "v2":
        return RestHop(config)
    raise ValueError(f"unsupported predictor protocol {config.protocol!r}")


# -- gRPC -------------------------------------------------------------------------------------

# The predictor's gRPC status -> what the transformer's client gets (4xx kept, outage 503, ...).
GRPC_TO_HTTP: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


def grpc_target(host: str, use_ssl: bool) -> str:
    """`host:port`, with :80 (:443 with TLS) added when no port is given, as kserve does: the
    controller passes `--predictor_host <isvc>-predictor.<ns>`, and gRPC alone would pick 443."""
    bare = host.rsplit("]", 1)[-1]  # an IPv6 literal's colons are inside the brackets
    if ":" in bare:
        return host
    return f"{host}:{443 if use_ssl else 80}"


class GrpcHop(Hop):
    def __init__(self, config: HopConfig):
        super().__init__(config)
        self._channel: aio.Channel | None = None
        self._stub: GRPCInferenceServiceStub | None = None

    def _connect(self) -> GRPCInferenceServiceStub:
        # Created lazily: a grpc.aio channel belongs to the event loop it was created on.
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                # Reconnect quickly after a predictor restart (the default backoff starts at 1 s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            target = grpc_target(self.config.host, self.config.use_ssl)
            if self.config.use_ssl:
                credentials = grpc.ssl_channel_credentials()
                self._channel = aio.secure_channel(target, credentials, options)
            else:
                self._channel = aio.insecure_channel(target, options)
            self._stub = GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def infer(
        self,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        headers: Mapping[str, str],
    ) -> dict[str, np.ndarray]:
        stub = self._connect()
        message = pb.ModelInferRequest(model_name=self.config.model_name, id=request_id)
        for name, array in inputs.items():
            message.inputs.add(
                name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape)
            )
            message.raw_input_contents.append(raw_from_array(array))
        for name in outputs:
            message.outputs.add(name=name)
        metadata = tuple(forwardable(headers).items())

        async def call() -> pb.ModelInferResponse:
            return await stub.ModelInfer(message, timeout=self.config.timeout_s, metadata=metadata)

        try:
            response = await self._with_retries(
                call,
                lambda e: (
                    isinstance(e, aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
                ),
            )
        except aio.AioRpcError as exc:
            raise self._error(exc) from None
        return _checked(self.config.where, lambda: _grpc_outputs(self.config.where, response))

    def _error(self, exc: aio.AioRpcError) -> KbundleError:
        code, details = exc.code(), exc.details() or exc.code().name
        if code == grpc.StatusCode.UNAVAILABLE:
            return ModelUnavailable(f"{self.config.where} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UpstreamTimeout(
                f"{self.config.where} did not answer within {self.config.timeout_s:g} s"
            )
        status = GRPC_TO_HTTP.get(code, HTTPStatus.BAD_GATEWAY)
        if status == HTTPStatus.BAD_REQUEST:
            return InvalidRequest(f"{self.config.where}: {details}")
        return PredictorError(
            f"{self.config.where}: {details}",
            status,
            code if status != HTTPStatus.BAD_GATEWAY else grpc.StatusCode.INTERNAL,
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


def _grpc_outputs(where: str, response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = response.raw_output_contents
    out = {}
    for index, tensor in enumerate(response.outputs):
        name = f"{where} output '{tensor.name}'"
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            out[tensor.name] = array_from_raw(name, tensor.datatype, shape, raw[index])
        else:
            field = CONTENTS_FIELD[tensor.datatype]
            out[tensor.name] = array_from_list(
                name, tensor.datatype, shape, list(getattr(tensor.contents, field))
            )
    return out


# -- REST -------------------------------------------------------------------------------------

# The predictor's HTTP status -> gRPC code for the transformer's gRPC clients.
HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class _Answer:
    """The parts of an HTTP response the hop needs, read before the connection is released."""

    status: int
    body: bytes
    header_length: str | None


class _Retryable503(Exception):
    def __init__(self, answer: _Answer):
        super().__init__(f"HTTP {answer.status}")
        self.answer = answer


# Failures before the predictor saw the request (or of a stale pooled connection): safe to retry.
_RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, _Retryable503)


class RestHop(Hop):
    """V2 REST with the binary extension, on aiohttp (a kserve dependency already in the image).

    aiohttp, not httpx: on the 64-float tensor the same loop measured p50 0.9-1.3 ms per call with
    aiohttp against 4.4-7.3 ms with httpx.AsyncClient (2-core machine, see docs/transformer.md).
    """

    def __init__(self, config: HopConfig):
        super().__init__(config)
        scheme = "https" if config.use_ssl else "http"
        self.url = f"{scheme}://{config.host}/v2/models/{config.model_name}/infer"
        self._session: aiohttp.ClientSession | None = None

    def _connect(self) -> aiohttp.ClientSession:
        # Created lazily, on the serving event loop; one pool of keep-alive connections.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                auto_decompress=False,
            )
        return self._session

    async def infer(
        self,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        headers: Mapping[str, str],
    ) -> dict[str, np.ndarray]:
        session = self._connect()
        body, json_length = encode_binary_request(request_id, inputs, outputs)
        # Exactly one Content-Type (kserve 0.21 sends two here, and the predictor answers 400).
        send_headers = {
            **forwardable(headers),
            "content-type": "application/octet-stream",
            HEADER_LENGTH: str(json_length),
        }

        async def call() -> _Answer:
            async with session.post(self.url, data=body, headers=send_headers) as response:
                answer = _Answer(
                    response.status, await response.read(), response.headers.get(HEADER_LENGTH)
                )
            if answer.status == HTTPStatus.SERVICE_UNAVAILABLE:
                raise _Retryable503(answer)
            return answer

        try:
            answer = await self._with_retries(call, lambda e: isinstance(e, _RETRYABLE))
        except _Retryable503 as exc:
            answer = exc.answer
        except asyncio.TimeoutError:
            raise UpstreamTimeout(
                f"{self.config.where} did not answer within {self.config.timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ModelUnavailable(
                f"{self.config.where} is unavailable: {exc or type(exc).__name__}"
            ) from None
        if answer.status >= 400:
            raise self._error(answer)
        return _checked(
            self.config.where,
            lambda: decode_binary_response(self.config.where, answer.body, answer.header_length),
        )

    def _error(self, answer: _Answer) -> KbundleError:
        text = answer.body.decode("utf-8", "replace")
        try:
            message = orjson.loads(answer.body).get("error") or text
        except (orjson.JSONDecodeError, AttributeError):
            message = text or HTTPStatus(answer.status).phrase
        status = answer.status
        where = f"{self.config.where}: {message}"
        if status == 503:
            return ModelUnavailable(f"{self.config.where} is unavailable: {message}")
        if status == 504:
            return UpstreamTimeout(where)
        if status == 400:
            return InvalidRequest(where)
        if 400 <= status < 500 or status == 501:
            code = HTTP_TO_GRPC.get(status, grpc.StatusCode.FAILED_PRECONDITION)
            return PredictorError(where, HTTPStatus(status), code)
        return PredictorError(where, HTTPStatus.BAD_GATEWAY, grpc.StatusCode.INTERNAL)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def encode_binary_request(
    request_id: str, inputs: Mapping[str, np.ndarray], outputs: list[str]
) -> tuple[bytes, int]:
    """A V2 binary-extension body (JSON header + raw tensors) and the header's length."""
    tails, tensors = [], []
    for name, array in inputs.items():
        raw = raw_from_array(array)
        tails.append(raw)
        tensors.append(
            {
                "name": name,
                "datatype": v2_datatype(array.dtype),
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    header = {
        "id": request_id,
        "inputs": tensors,
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
        "parameters": {"binary_data_output": True},
    }
    head = orjson.dumps(header)
    return b"".join([head, *tails]), len(head)


def decode_binary_response(
    where: str, body: bytes, header_length: str | None
) -> dict[str, np.ndarray]:
    """Outputs of a V2 REST response, JSON or binary-extension (as any V2 server may answer)."""
    view = memoryview(body)
    json_length = int(header_length) if header_length else len(body)
    header = orjson.loads(view[:json_length])
    tail, offset, out = view[json_length:], 0, {}
    for tensor in header.get("outputs") or []:
        name, shape, datatype = tensor["name"], tuple(tensor["shape"]), tensor["datatype"]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        label = f"{where} output '{name}'"
        if size is not None:
            out[name] = array_from_raw(label, datatype, shape, tail[offset : offset + size])
            offset += size
        else:
            out[name] = array_from_list(label, datatype, shape, tensor["data"])
    return out
