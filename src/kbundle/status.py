"""The one table from a transport-free `Status` to its HTTP status and gRPC code.

Used by the predictor's and transformer's servers, the transformer's hops (reading a predictor's
answer back into a status) and the local ingress. The metrics outcome of a status comes from here
too: a 5xx is the serving revision's fault, a cancel is the client leaving, the rest the client's.
"""

from __future__ import annotations

import grpc

from kbundle.errors import KBundleError, Status

G = grpc.StatusCode
# Order matters for the reverse look-ups: the first status with a given code wins.
TABLE: dict[Status, tuple[int, grpc.StatusCode]] = {
    Status.INVALID_ARGUMENT: (400, G.INVALID_ARGUMENT),
    Status.FAILED_PRECONDITION: (400, G.FAILED_PRECONDITION),
    Status.OUT_OF_RANGE: (400, G.OUT_OF_RANGE),
    Status.UNAUTHENTICATED: (401, G.UNAUTHENTICATED),
    Status.PERMISSION_DENIED: (403, G.PERMISSION_DENIED),
    Status.NOT_FOUND: (404, G.NOT_FOUND),
    Status.ABORTED: (409, G.ABORTED),
    Status.ALREADY_EXISTS: (409, G.ALREADY_EXISTS),
    Status.RESOURCE_EXHAUSTED: (429, G.RESOURCE_EXHAUSTED),
    Status.PAYLOAD_TOO_LARGE: (413, G.RESOURCE_EXHAUSTED),
    Status.HEADERS_TOO_LARGE: (431, G.RESOURCE_EXHAUSTED),
    Status.CANCELLED: (499, G.CANCELLED),  # nginx's "client closed request"
    Status.INTERNAL: (500, G.INTERNAL),
    Status.UNKNOWN: (500, G.UNKNOWN),
    Status.DATA_LOSS: (500, G.DATA_LOSS),
    Status.UNIMPLEMENTED: (501, G.UNIMPLEMENTED),
    Status.BAD_GATEWAY: (502, G.INTERNAL),
    Status.UNAVAILABLE: (503, G.UNAVAILABLE),
    Status.DEADLINE_EXCEEDED: (504, G.DEADLINE_EXCEEDED),
}
_BY_GRPC: dict[grpc.StatusCode, Status] = {}
_BY_HTTP: dict[int, Status] = {}
for _status, (_http, _code) in TABLE.items():
    _BY_GRPC.setdefault(_code, _status)
    _BY_HTTP.setdefault(_http, _status)

OUTCOMES = ("ok", "client_error", "server_error", "cancelled", "dropped")


def http_status(status: Status) -> int:
    return TABLE[status][0]


def grpc_code(status: Status) -> grpc.StatusCode:
    return TABLE[status][1]


def from_grpc(code: grpc.StatusCode) -> Status:
    """The status of a gRPC code read from a peer (an unknown one is UNKNOWN)."""
    return _BY_GRPC.get(code, Status.UNKNOWN)


def from_http(code: int) -> Status:
    """The status of an HTTP answer read from a peer: another 4xx is the client's
    (FAILED_PRECONDITION), another 5xx the upstream's (BAD_GATEWAY)."""
    found = _BY_HTTP.get(code)
    if found is not None:
        return found
    return Status.FAILED_PRECONDITION if 400 <= code < 500 else Status.BAD_GATEWAY


def is_server_fault(status: Status) -> bool:
    """The serving revision's fault (5xx, UNKNOWN/INTERNAL/UNAVAILABLE/DEADLINE_EXCEEDED)."""
    return http_status(status) >= 500


def outcome(status: Status) -> str:
    if status is Status.CANCELLED:
        return "cancelled"
    return "server_error" if is_server_fault(status) else "client_error"


def error_outcome(exc: KBundleError) -> str:
    return exc.outcome or outcome(exc.status)
