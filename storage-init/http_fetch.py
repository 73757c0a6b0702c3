"""http(s) downloads streamed to disk in chunks, with retries, back-off and Range resume.

Errors are classified where they arise: 404/410 and 401/403 are permanent and raised at once;
timeouts, resets, 5xx and 429 are retried by `kbundle.retry` within the SRC_URI's deadline (the
per-request timeouts are cut to what is left of it), keeping the bytes already on disk for a
Range resume. A conditional GET (If-None-Match / If-Modified-Since from DEST's source record)
lets an unchanged file cost one 304 and no body.

kserve-storage's http path has no retries, no resume and refuses servers that do not send its
exact Content-Types, so this transport is ours; it keeps KServe's one credential convention:
extra request headers as JSON in the env var `<hostname>-headers` (never logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from kbundle.retry import Deadline, RetryExhausted, retry_call
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import (
    AccessError,
    FetchError,
    NotFoundError,
    TransientError,
)
from kbundle.storage_init.progress import Progress
from kbundle.storage_init.uris import redact

log = logging.getLogger("kbundle.storage_init")
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""


def file_name(uri: str) -> str:
    name = os.path.basename(unquote(urlsplit(uri).path))
    if not name or name in (".", ".."):
        raise FetchError(f"{redact(uri)}: the URL names no file", hint="Point the URI at a file.")
    return name


def request_headers(uri: str) -> dict[str, str]:
    """KServe convention: headers for host H come from env `H-headers` as a JSON object."""
    raw = os.environ.get(f"{urlsplit(uri).hostname}-headers", "")
    if not raw:
        return {}
    try:
        headers = json.loads(raw)
    except ValueError as exc:
        raise FetchError(f"env {urlsplit(uri).hostname}-headers is not JSON") from exc
    return {str(k): str(v) for k, v in headers.items()}


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    validator: dict[str, str]
    """What identifies this version at the server (ETag, Last-Modified) plus its sha256."""


def download(
    uri: str,
    dest_dir: Path,
    settings: StorageSettings,
    deadline: Deadline,
    known: dict[str, str] | None = None,
) -> Fetched | None:
    """Stream `uri` into `dest_dir`; None when `known` (the validator of the copy in DEST) still
    matches, which the server says with a 304 and no body."""
    target = dest_dir / file_name(uri)
    headers = request_headers(uri)

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1f s", redact(uri), attempt, exc, delay
        )

    with requests.Session() as session:
        try:
            return retry_call(
                lambda: _attempt(session, uri, target, headers, settings, deadline, known),
                settings.retry_policy(),
                retryable=lambda exc: isinstance(exc, _Transient),
                on_retry=on_retry,
                deadline=deadline,
            )
        except RetryExhausted as exc:
            raise TransientError(f"{redact(uri)}: {exc}") from exc


def _conditional(known: dict[str, str] | None) -> dict[str, str]:
    """Headers asking the server to skip the body when DEST's copy is still current."""
    out = {}
    if known and known.get("etag"):
        out["If-None-Match"] = known["etag"]
    if known and known.get("last_modified"):
        out["If-Modified-Since"] = known["last_modified"]
    return out


def _attempt(
    session: requests.Session,
    uri: str,
    target: Path,
    headers: dict,
    settings: StorageSettings,
    deadline: Deadline,
    known: dict[str, str] | None,
) -> Fetched | None:
    """One GET, resuming from the bytes already on disk when the server supports ranges."""
    have = target.stat().st_size if target.exists() else 0
    extra = {"Range": f"bytes={have}-"} if have else _conditional(known)
    timeout = (deadline.cap(settings.connect_timeout_s), deadline.cap(settings.read_timeout_s))
    try:
        with session.get(uri, headers={**headers, **extra}, stream=True, timeout=timeout) as resp:
            if resp.status_code == 304 and not have:
                return None
            _check_status(uri, resp, target)
            digest = _stream(uri, resp, target, have, settings)
            validator = {
                "etag": resp.headers.get("ETag", ""),
                "last_modified": resp.headers.get("Last-Modified", ""),
                "sha256": digest,
            }
            return Fetched(target, digest, validator)
    except requests.exceptions.SSLError as exc:
        raise FetchError(
            f"{redact(uri)}: TLS failed: {_short(exc)}",
            hint="Trust the server's CA (REQUESTS_CA_BUNDLE / the KServe CA bundle) or fix its certificate.",
        ) from exc
    except _TRANSIENT_ERRORS as exc:
        raise _Transient(f"{type(exc).__name__}: {_short(exc)}") from exc


def _stream(
    uri: str, resp: requests.Response, target: Path, have: int, settings: StorageSettings
) -> str:
    """Write the body (appending to `have` kept bytes on a 206); returns the whole file's sha256."""
    resumed = have and resp.status_code == 206
    if resumed and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        target.unlink()
        raise _Transient("the server resumed at a different offset; starting over")
    if not resumed:
        have = 0
    total = _expected_total(resp, have)
    digest = _hash_prefix(target, have)
    progress = Progress(f"{redact(uri)}", total, settings.progress_interval_s)
    progress.reset(have)
    with open(target, "ab" if resumed else "wb") as out:
        for chunk in resp.iter_content(settings.chunk_bytes):
            out.write(chunk)
            digest.update(chunk)
            progress.update(len(chunk))
    if total is not None and progress.done != total:
        raise _Transient(f"connection closed at {progress.done} of {total} bytes")
    progress.finish()
    return digest.hexdigest()


def _check_status(uri: str, resp: requests.Response, target: Path) -> None:
    """Permanent answers raise their classified error at once; transient ones `_Transient`."""
    code = resp.status_code
    if code == 416:  # our resume offset is not valid for the file (it changed?)
        target.unlink(missing_ok=True)
        raise _Transient("HTTP 416 on resume; starting over")
    if code in _TRANSIENT_STATUS or code >= 500:
        raise _Transient(f"HTTP {code}")
    if code in (401, 403, 407):
        raise AccessError(
            f"{redact(uri)}: HTTP {code} (not authorized)",
            hint=f"Set the request headers in env '{urlsplit(uri).hostname}-headers' (JSON) or use a valid presigned URL.",
        )
    if code in (404, 410):
        raise NotFoundError(f"{redact(uri)}: HTTP {code} (no such file)")
    if code >= 400:
        raise FetchError(
            f"{redact(uri)}: HTTP {code}", hint="Check the URL and what the server expects."
        )
    html = resp.headers.get("Content-Type", "").startswith("text/html")
    if html and not urlsplit(uri).path.endswith((".html", ".htm")):
        raise FetchError(
            f"{redact(uri)}: the server answered with an HTML page, not the model file",
            hint="This is usually a login or error page: check the URL and its credentials.",
        )


def _expected_total(resp: requests.Response, have: int) -> int | None:
    """Full size in bytes when the server says so (and did not re-encode the body)."""
    length = resp.headers.get("Content-Length")
    if length is None or resp.headers.get("Content-Encoding", "identity") != "identity":
        return None
    return have + int(length)


def _hash_prefix(target: Path, have: int) -> hashlib._Hash:
    """Re-hash the bytes kept from an earlier attempt so the digest covers the whole file."""
    digest = hashlib.sha256()
    if have:
        with open(target, "rb") as src:
            while block := src.read(1024 * 1024):
                digest.update(block)
    return digest


def _short(exc: BaseException) -> str:
    """The error text without query strings (a presigned URL's signature must not reach logs)."""
    text = re.sub(r"\?[^\s'\")]*", "?<redacted>", str(exc))
    return text if len(text) < 200 else text[:200] + "..."
