"""botocore's exceptions sorted into storage-init's classes: permanent now, or worth a retry."""

from __future__ import annotations

from kbundle.storage_init.errors import (
    AccessError,
    FetchError,
    NotFoundError,
    StorageInitError,
)

_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "403",
    "401",
}
_BUSY = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}


class Transient(Exception):
    """A failure worth another attempt (network, timeout, 5xx, throttling)."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)


def classify(exc: Exception, uri: str) -> Exception:
    """The storage-init error for `exc`, or `Transient` to retry; our own errors pass through."""
    from botocore import exceptions as bx

    if isinstance(exc, StorageInitError | Transient):
        return exc
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, uri)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AccessError(f"{uri}: no usable S3 credentials ({exc})")
    transient = (
        bx.ConnectionError,  # endpoint refused/unreachable, connect and read timeouts, resets
        bx.ResponseStreamingError,
        bx.IncompleteReadError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return Transient(str(exc))
    return exc


def _client_error(exc: Exception, uri: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _NOT_FOUND or status == 404:
        return NotFoundError(f"{uri}: {code or 'HTTP 404'} (no such bucket or key)")
    if code in _DENIED or status in (401, 403):
        return AccessError(f"{uri}: {code or status} (not allowed to read it)")
    if code == "PreconditionFailed" or status == 412:
        return FetchError(
            f"{uri}: an object changed while it was being downloaded",
            hint="Upload model versions to a new prefix instead of overwriting; the pod restart retries.",
        )
    if code in _BUSY or status >= 500 or status == 429:
        return Transient(f"{code or 'HTTP'} {status}")
    return FetchError(f"{uri}: {code} (HTTP {status})")
