"""http(s) downloads streamed to disk in chunks, with retries, back-off and Range resume.

kserve-storage's http path has no retries, no resume and refuses servers that do not send its
exact Content-Types, so this transport is ours; it keeps KServe's one credential convention:
extra request headers as JSON in the env var `<hostname>-headers` (never logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import FetchError
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


def download(uri: str, dest_dir: Path, settings: StorageSettings) -> tuple[Path, str]:
    """Stream `uri` into `dest_dir`; returns the file and its sha256 (computed while writing)."""
    target = dest_dir / file_name(uri)
    headers = request_headers(uri)
    with requests.Session() as session:
        for attempt in range(1, settings.retries + 1):
            try:
                return target, _attempt(session, uri, target, headers, settings)
            except _Transient as exc:
                if attempt == settings.retries:
                    raise FetchError(
                        f"{redact(uri)}: gave up after {attempt} attempts: {exc}",
                        hint="The server kept failing or dropping the connection; check it and restart the pod.",
                    ) from exc
                delay = min(settings.backoff_s * 2 ** (attempt - 1), 30.0) * random.uniform(
                    0.8, 1.2
                )
                log.warning(
                    "%s: attempt %d failed (%s); retrying in %.1f s",
                    redact(uri),
                    attempt,
                    exc,
                    delay,
                )
                time.sleep(delay)
    raise AssertionError("unreachable")


def _attempt(
    session: requests.Session, uri: str, target: Path, headers: dict, settings: StorageSettings
) -> str:
    """One GET, resuming from the bytes already on disk when the server supports ranges."""
    have = target.stat().st_size if target.exists() else 0
    req_headers = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
    timeout = (settings.connect_timeout_s, settings.read_timeout_s)
    try:
        with session.get(uri, headers=req_headers, stream=True, timeout=timeout) as resp:
            _check_status(uri, resp, target)
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
    except _TRANSIENT_ERRORS as exc:
        raise _Transient(f"{type(exc).__name__}: {_short(exc)}") from exc


def _check_status(uri: str, resp: requests.Response, target: Path) -> None:
    if resp.status_code == 416:  # our resume offset is not valid for the file (it changed?)
        target.unlink(missing_ok=True)
        raise _Transient("HTTP 416 on resume; starting over")
    if resp.status_code in _TRANSIENT_STATUS:
        raise _Transient(f"HTTP {resp.status_code}")
    if resp.status_code in (401, 403):
        raise FetchError(
            f"{redact(uri)}: HTTP {resp.status_code} (not authorized)",
            hint=f"Set the request headers in env '{urlsplit(uri).hostname}-headers' (JSON) or use a valid presigned URL.",
        )
    if resp.status_code >= 400:
        raise FetchError(
            f"{redact(uri)}: HTTP {resp.status_code}", hint="Check that the URL exists."
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
