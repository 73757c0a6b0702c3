"""s3:// prefixes and objects: one listing, then bounded parallel streamed transfers.

kserve-storage downloads S3 objects in a multiprocessing pool with no total progress, no resume
and its own retries; here one boto3 client (thread-safe, configured by kserve-storage's own
`_get_s3_client_kwargs`, so AWS_ENDPOINT_URL, S3_VERIFY_SSL, AWS_CA_BUNDLE and anonymous access
work as in KServe) serves `parallel` threads. Each object streams in `chunk_bytes` pieces, so peak
memory is about parallel x chunk whatever the model size; a retry resumes with a Range request
pinned to the listed ETag. The listing (keys, sizes, ETags) is the version the skip rule compares;
a re-upload with new ETags but the same SHA256SUMS (covering every object) counts as unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kbundle.retry import Deadline, RetryExhausted, retry_call
from kbundle.storage_init import s3_errors
from kbundle.storage_init.checksums import SUMS_FILE, parse_sums
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import NotFoundError, TransientError
from kbundle.storage_init.extract_guard import check_name
from kbundle.storage_init.local_copy import patterns, wanted
from kbundle.storage_init.progress import Progress

log = logging.getLogger("kbundle.storage_init")
MAX_SUMS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class S3Object:
    key: str
    rel: str
    size: int
    etag: str


class Cancelled(Exception):
    """Another transfer failed; this one stops (its error is never the one reported)."""


class SharedProgress(Progress):
    """One total progress line for all transfer threads."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()

    def update(self, nbytes: int) -> None:
        with self.lock:
            super().update(nbytes)


def client(settings: StorageSettings, deadline: Deadline) -> Any:
    import boto3
    from botocore.config import Config
    from kserve_storage import Storage

    kwargs = Storage._get_s3_client_kwargs()
    ours = Config(
        retries={"max_attempts": 1, "mode": "standard"},  # kbundle.retry does the retrying
        max_pool_connections=max(settings.parallel, 10),
        connect_timeout=deadline.cap(settings.connect_timeout_s),
        read_timeout=deadline.cap(settings.read_timeout_s),
    )
    kwargs["config"] = kwargs["config"].merge(ours)
    return boto3.client("s3", **kwargs)


def list_objects(s3: Any, uri: str) -> list[S3Object]:
    """The objects under the prefix (or the one object the URI names), filtered like KServe."""
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    allow, ignore = patterns("STORAGE_ALLOW_PATTERNS"), patterns("STORAGE_IGNORE_PATTERNS")
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key == prefix:  # the URI names one object
                return [S3Object(key, key.rsplit("/", 1)[-1], item["Size"], item["ETag"])]
            if key.endswith("/") or not key.startswith(folder):
                continue  # folder markers, and `digits/v10/...` for the prefix `digits/v1`
            rel = check_name(key[len(folder) :], uri)
            if wanted(rel, allow, ignore):
                found.append(S3Object(key, rel, item["Size"], item["ETag"]))
    if not found:
        raise NotFoundError(f"{uri}: No model found under this prefix (no objects listed)")
    return found


def _retrying(fn: Any, uri: str, settings: StorageSettings, deadline: Deadline) -> Any:
    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("%s: attempt %d failed (%s); retrying in %.1f s", uri, attempt, exc, delay)

    def classified() -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - botocore's errors, sorted by s3_errors
            raise s3_errors.classify(exc, uri) from exc

    try:
        return retry_call(
            classified, settings.retry_policy(), s3_errors.is_transient, on_retry, deadline
        )
    except RetryExhausted as exc:
        raise TransientError(f"{uri}: {exc}") from exc


def download(
    uri: str, dest_dir: Path, settings: StorageSettings, deadline: Deadline, known: dict | None
) -> dict | None:
    """Fetch every listed object into `dest_dir`; returns the listing validator, or None when
    `known` (DEST's record) lists the same keys, sizes and ETags: then nothing is transferred."""
    s3 = client(settings, deadline)
    objects = _retrying(lambda: list_objects(s3, uri), uri, settings, deadline)
    validator = {"objects": {o.rel: [o.size, o.etag] for o in objects}}
    if known and (
        known.get("objects") == validator["objects"] or _same_sums(s3, uri, objects, known)
    ):
        return None
    total = sum(o.size for o in objects)
    progress = SharedProgress(f"{uri} ({len(objects)} files)", total, settings.progress_interval_s)
    bucket, stop = urlsplit(uri).netloc, threading.Event()

    def one(obj: S3Object) -> None:
        target = dest_dir / obj.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        get = lambda: _get(s3, bucket, obj, target, progress, settings.chunk_bytes, stop)  # noqa: E731
        _retrying(get, uri, settings, deadline)

    with ThreadPoolExecutor(min(settings.parallel, len(objects)), "s3") as pool:
        futures = [pool.submit(one, obj) for obj in objects]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # a failure (or SIGTERM) stops the other transfers at their next chunk
            stop.set()
            for future in futures:
                future.cancel()
        for future in done:
            future.result()  # the first failure, classified
    progress.finish()
    return validator


def _same_sums(s3: Any, uri: str, objects: list[S3Object], known: dict) -> bool:
    """Re-uploaded but identical (new ETags, e.g. multipart): the same keys and sizes, and a
    SHA256SUMS byte-identical to the verified one in DEST that lists every other object."""
    old = {rel: entry[0] for rel, entry in (known.get("objects") or {}).items()}
    sums = next((o for o in objects if o.rel == SUMS_FILE), None)
    if not known.get("sums") or sums is None or old != {o.rel: o.size for o in objects}:
        return False
    body = s3.get_object(Bucket=urlsplit(uri).netloc, Key=sums.key)["Body"].read(MAX_SUMS_BYTES)
    if hashlib.sha256(body).hexdigest() != known["sums"]:
        return False
    listed = {rel for _, rel in parse_sums(body.decode("utf-8", errors="replace"))}
    return listed == {o.rel for o in objects} - {SUMS_FILE}


def _get(
    s3: Any,
    bucket: str,
    obj: S3Object,
    target: Path,
    progress: Progress,
    chunk: int,
    stop: threading.Event,
) -> None:
    """One GET of `obj`, appending to the bytes an earlier attempt left (same ETag only)."""
    have = target.stat().st_size if target.exists() else 0
    args = {"Bucket": bucket, "Key": obj.key, "IfMatch": obj.etag}
    if 0 < have < obj.size:
        args["Range"] = f"bytes={have}-"
    elif have:
        progress.update(-have)  # starting over: those bytes are written again
        have = 0
    body = s3.get_object(**args)["Body"]
    with open(target, "ab" if have else "wb") as out:
        for block in body.iter_chunks(chunk):
            if stop.is_set():
                raise Cancelled
            out.write(block)
            progress.update(len(block))
    size = target.stat().st_size
    if size != obj.size:
        raise s3_errors.Transient(f"{obj.key}: connection closed at {size} of {obj.size} bytes")
