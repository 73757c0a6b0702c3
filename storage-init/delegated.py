"""s3, gs, azure, hf (and hdfs, modelscope, oci, git) through kserve-storage's own transports.

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
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import FetchError
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


def download(uri: str, dest_dir: Path, settings: StorageSettings) -> None:
    """Fetch `uri` into `dest_dir`, retrying the whole transfer (into a clean dir) when transient."""
    from kserve_storage import Storage

    for attempt in range(1, settings.retries + 1):
        try:
            with _no_unpack(), _watch(uri, dest_dir, settings):
                Storage.download(uri, str(dest_dir))
            return
        except Exception as exc:  # kserve-storage raises bare Exception/RuntimeError
            transient = any(w in _chain_text(exc) for w in _TRANSIENT_WORDS)
            if not transient or attempt == settings.retries:
                tries = f" (after {attempt} attempts)" if transient else ""
                raise FetchError(f"{uri}: {exc}{tries}") from exc
            log.warning("%s: attempt %d failed (%s); retrying", uri, attempt, exc)
            _empty(dest_dir)
            time.sleep(min(settings.backoff_s * 2 ** (attempt - 1), 30.0))


def _chain_text(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__} {exc}".lower())
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def _empty(path: Path) -> None:
    shutil.rmtree(path)
    path.mkdir()


def _expected_bytes(uri: str) -> int | None:
    """Best effort: the summed size of the S3 objects under the prefix, for an ETA."""
    if not uri.startswith("s3://"):
        return None
    try:
        import boto3
        from kserve_storage import Storage

        parts = urlsplit(uri)
        bucket = boto3.resource("s3", **Storage._get_s3_client_kwargs()).Bucket(parts.netloc)
        return sum(o.size for o in bucket.objects.filter(Prefix=parts.path.lstrip("/"))) or None
    except Exception:  # noqa: BLE001 - only an ETA; the download reports real errors
        return None


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def _watch(uri: str, dest_dir: Path, settings: StorageSettings) -> Iterator[None]:
    progress = Progress(uri, _expected_bytes(uri), settings.progress_interval_s)
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
