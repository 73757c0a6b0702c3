"""One error model for every transport.

Each error carries its HTTP status and gRPC code, so REST and gRPC map them from one table
(`kbundle.serving.errors_http` / `kbundle.serving.grpc_server`) and cannot drift apart.
Messages name the model, the tensor, what was expected and what arrived.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc


class KbundleError(Exception):
    """Base of every error a client may see; `message` is safe to send to the client."""

    http_status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    # kserve's own handlers read `.reason`; keep them working if one of ours reaches them.
    @property
    def reason(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(KbundleError):
    """The request does not fit the model's signature or the protocol: the client must fix it."""

    http_status = HTTPStatus.BAD_REQUEST
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(KbundleError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(KbundleError):
    """Not ready, overloaded, or an upstream (the predictor behind a transformer) is down."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(KbundleError):
    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unsupported(KbundleError):
    http_status = HTTPStatus.NOT_IMPLEMENTED
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class EngineError(KbundleError):
    """The engine failed on a request that passed validation: a server-side fault."""

    http_status = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code = grpc.StatusCode.INTERNAL


class EngineLoadError(Exception):
    """The engine could not be loaded; the message is one line saying why (never sent to clients)."""


class ConfigError(ValueError):
    """A setting or model config value is invalid; raised at start-up, before serving."""


class PayloadTooLarge(KbundleError):
    """A request body or message over `max_request_bytes`: refused while reading, never buffered."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(KbundleError):
    """The model's queue holds `max_queue_size` requests: refused at once; retry after a while."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(KbundleError):
    """The request's deadline passed before the engine ran it: dropped, never computed."""

    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestHeadersTooLarge(KbundleError):
    """Request headers over the size or count limit."""

    http_status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ClientDisconnected(KbundleError):
    """The client went away before its answer (REST disconnect, gRPC cancel): nothing is sent."""

    http_status = HTTPStatus.REQUEST_TIMEOUT
    grpc_code = grpc.StatusCode.CANCELLED
