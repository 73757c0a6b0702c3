"""gs, azure, hf (and hdfs, modelscope, oci, git) through kserve-storage's own transports.

Credentials are whatever kserve-storage reads (AWS_* / S3_* env from the KServe S3 secret,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_*, HF_TOKEN ...); this module never reads or logs them.
Two things are changed around the call: kserve-storage's archive unpacking is switched off (we
unpack with path and size guards instead), and a watcher reports progress from the bytes landing
in the staging dir, since the transports report none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from kbundle.retry import Deadline, RetryExhausted, retry_call
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import AccessError, FetchError, NotFoundError, TransientError
from kbundle.storage_init.progress import Progress

log = logging.getLogger("kbundle.storage_init")
_TRANSIENT_WORDS = (
    "connect",
    "timed out",
    "timeout",
    "reset by peer",
    "incompleteread",
    "throttl",
    "slow down",
)


def apply_s3_env_conventions(env: dict[str, str] | None = None) -> None:
    """KServe's S3 secret sets S3_ENDPOINT/S3_USE_HTTPS; boto3 wants AWS_ENDPOINT_URL."""
    env = os.environ if env is None else env
    endpoint = env.get("S3_ENDPOINT", "")
    if endpoint and not env.get("AWS_ENDPOINT_URL"):
        if "://" not in endpoint:
            scheme = "http" if env.get("S3_USE_HTTPS", "1") in ("0", "false") else "https"
            endpoint = f"{scheme}://{endpoint}"
        env["AWS_ENDPOINT_URL"] = endpoint


@contextlib.contextmanager
def _no_unpack() -> Iterator[None]:
    """kserve-storage unzips without size limits; keep its archives as files for archives.py."""
    from kserve_storage import Storage

    original = Storage.__dict__["_unpack_archive_file"]
    Storage._unpack_archive_file = staticmethod(
        lambda file_path, mimetype, target_dir=None: target_dir
    )
    try:
        yield
    finally:
        Storage._unpack_archive_file = original


class _Transient(Exception):
    pass


def download(uri: str, dest_dir: Path, settings: StorageSettings, deadline: Deadline) -> None:
    """Fetch `uri` into `dest_dir`, retrying the whole transfer (into a clean dir) when transient."""

    def attempt() -> None:
        from kserve_storage import Storage

        try:
            with _no_unpack(), _watch(uri, dest_dir, settings):
                Storage.download(uri, str(dest_dir))
        except Exception as exc:  # kserve-storage raises bare Exception/RuntimeError
            _empty(dest_dir)
            raise _classify(exc, uri) from exc

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("%s: attempt %d failed (%s); retrying in %.1f s", uri, attempt, exc, delay)

    try:
        retry_call(
            attempt,
            settings.retry_policy(),
            lambda exc: isinstance(exc, _Transient),
            on_retry,
            deadline,
        )
    except RetryExhausted as exc:
        raise TransientError(f"{uri}: {exc}") from exc


def _classify(exc: Exception, uri: str) -> Exception:
    """kserve-storage's errors carry no type worth trusting: sort them by their text."""
    text = _chain_text(exc)
    if any(w in text for w in _TRANSIENT_WORDS):
        return _Transient(str(exc))
    if any(w in text for w in ("not found", "404", "nosuchkey", "nosuchbucket", "no model found")):
        return NotFoundError(f"{uri}: {exc}")
    if any(
        w in text
        for w in (
            "403",
            "401",
            "forbidden",
            "access denied",
            "accessdenied",
            "credential",
            "unauthorized",
        )
    ):
        return AccessError(f"{uri}: {exc}")
    return FetchError(f"{uri}: {exc}")


def _chain_text(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__} {exc}".lower())
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def _empty(path: Path) -> None:
    shutil.rmtree(path)
    path.mkdir()


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def _watch(uri: str, dest_dir: Path, settings: StorageSettings) -> Iterator[None]:
    progress = Progress(uri, None, settings.progress_interval_s)  # sizes unknown up front
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(min(progress.interval, 1.0)):
            size = _dir_bytes(dest_dir)
            progress.update(size - progress.done)

    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    progress.update(_dir_bytes(dest_dir) - progress.done)
    progress.finish()
