"""One error model for every transport, with no transport imports.

Each error carries a transport-free `status`; `kbundle.status` holds the one table from a status
to its HTTP status and gRPC code, so REST and gRPC cannot drift apart. Messages name the model,
the tensor, what was expected and what arrived.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What went wrong, independent of the transport (names follow gRPC's where one fits)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ABORTED = "ABORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNKNOWN = "UNKNOWN"
    DATA_LOSS = "DATA_LOSS"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    BAD_GATEWAY = "BAD_GATEWAY"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class KBundleError(Exception):
    """Base of every error a client may see; `message` is safe to send to the client.

    `outcome` overrides the metrics outcome the status implies (admission drops say `dropped`).
    """

    status: Status = Status.INTERNAL
    outcome: str | None = None

    def __init__(self, message: str, status: Status | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    # kserve's own handlers read `.reason`; keep them working if one of ours reaches them.
    @property
    def reason(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        from kbundle.status import http_status

        return http_status(self.status)

    @property
    def grpc_code(self):  # grpc.StatusCode; typed loosely so this module imports no grpc
        from kbundle.status import grpc_code

        return grpc_code(self.status)

    def __str__(self) -> str:
        return self.message


KbundleError = KBundleError  # the name before the transport-free base; kept for callers


class InvalidRequest(KBundleError):
    """The request does not fit the model's signature or the protocol: the client must fix it."""

    status = Status.INVALID_ARGUMENT


class ModelNotFoundError(KBundleError):
    status = Status.NOT_FOUND


class ModelUnavailable(KBundleError):
    """Not ready, overloaded, or an upstream (the predictor behind a transformer) is down."""

    status = Status.UNAVAILABLE


class UpstreamTimeout(KBundleError):
    status = Status.DEADLINE_EXCEEDED


class Unsupported(KBundleError):
    status = Status.UNIMPLEMENTED


class EngineError(KBundleError):
    """The engine failed on a request that passed validation: a server-side fault."""

    status = Status.INTERNAL


class ClientCancelled(KBundleError):
    """The client went away (cancel, its deadline): never the server's fault."""

    status = Status.CANCELLED


class PayloadTooLarge(KBundleError):
    """The request body is over the configured limit (refused before it is read whole)."""

    status = Status.PAYLOAD_TOO_LARGE
    outcome = "dropped"


class QueueFull(KBundleError):
    """The admission queue is full; `retry_after_s` is the hint sent back (HTTP Retry-After)."""

    status = Status.RESOURCE_EXHAUSTED
    outcome = "dropped"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(KBundleError):
    """The request's own deadline passed before it could be served (dropped, not run)."""

    status = Status.DEADLINE_EXCEEDED
    outcome = "dropped"


class RequestHeadersTooLarge(KBundleError):
    status = Status.HEADERS_TOO_LARGE
    outcome = "dropped"


class EngineLoadError(Exception):
    """The engine could not be loaded; the message is one line saying why (never sent to clients)."""


class ConfigError(ValueError):
    """A setting or model config value is invalid; raised at start-up, before serving."""
