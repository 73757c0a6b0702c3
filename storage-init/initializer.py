"""One `SRC_URI DEST_DIR` pair: recover, skip if unchanged, stage, fetch, unpack, verify, build, record, swap."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kbundle.retry import Deadline
from kbundle.storage_init import (
    archives,
    checksums,
    delegated,
    engine_step,
    http_fetch,
    local_copy,
    s3_fetch,
    source_record,
)
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import (
    VOLUME_ERRNOS,
    ArchiveError,
    IntegrityError,
    StorageInitError,
    volume_error,
)
from kbundle.storage_init.progress import human
from kbundle.storage_init.staging import Staging, is_reserved, model_entries, recover
from kbundle.storage_init.uris import Source, is_archive

log = logging.getLogger("kbundle.storage_init")


def initialize(source: Source, dest: Path, settings: StorageSettings) -> None:
    """Leave DEST holding the verified model from `source`, or exactly as it was on failure."""
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        recover(dest)
        known = source_record.load(dest, source) if settings.skip_unchanged else None
        if known is not None and source.sha256:
            log.info("%s already holds %s (same #sha256): nothing to fetch", dest, source.safe)
            return
        _install(source, dest, settings, known)
    except BaseException as exc:
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # leave no trace of a DEST this run made
        if isinstance(exc, OSError) and exc.errno in VOLUME_ERRNOS:
            raise volume_error(exc) from exc
        if isinstance(exc, StorageInitError) and exc.uri is None:
            exc.uri = source.safe
        raise


def _install(source: Source, dest: Path, settings: StorageSettings, known: dict | None) -> None:
    staging = Staging(dest)
    try:
        staging.create()
        with _temp_inside(staging.tmp):
            fetched = _fetch(source, staging, settings, Deadline(settings.deadline_s), known)
            if fetched is None:
                staging.discard()
                log.info(
                    "%s: unchanged at the source; %s kept, nothing transferred", source.safe, dest
                )
                return
            validator, digest = fetched
            _materialize(source, staging, digest, settings)
        checksums.verify_model(staging.model)
        engine_step.maybe_build(staging.model)
        source_record.write(staging.model, source, validator)
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    files, size = _census(dest)
    log.info("%s -> %s: %d files, %s", source.safe, dest, files, human(size))


@contextmanager
def _temp_inside(tmp: Path) -> Iterator[None]:
    """Library temp and cache files go under DEST's staging dir, so nothing lands outside DEST
    (the image's root filesystem is read-only). HF_HOME moves only where the user set none."""
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "HF_HOME")}
    saved_dir = tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp), str(tmp)
    if saved["HF_HOME"] is None:
        os.environ["HF_HOME"] = str(tmp / "hf")
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fetch(
    source: Source,
    staging: Staging,
    settings: StorageSettings,
    deadline: Deadline,
    known: dict | None,
) -> tuple[dict, str | None] | None:
    """Download into `staging.fetch`: (validator, sha256 when the transport computed it), or
    None when `known` (DEST's record) is still the source's current version."""
    log.info("fetching %s", source.safe)
    if source.kind == "http":
        got = http_fetch.download(source.uri, staging.fetch, settings, deadline, known)
        return None if got is None else (got.validator, got.sha256)
    if source.kind == "s3":
        listing = s3_fetch.download(source.uri, staging.fetch, settings, deadline, known)
        return None if listing is None else (listing, None)
    if source.kind == "local":
        local_copy.copy(source.local_path, staging.fetch, settings.progress_interval_s)
        return {}, None
    delegated.download(source.uri, staging.fetch, settings, deadline)
    return {}, None


def _materialize(
    source: Source, staging: Staging, digest: str | None, settings: StorageSettings
) -> None:
    """Check the URI digest, then unpack a single archive or take the files as the model."""
    entries = list(staging.fetch.iterdir())
    for entry in entries:
        if is_reserved(entry.name):
            raise ArchiveError(
                f"{source.safe}: the source holds {entry.name!r}, a name reserved for "
                "storage-init's own bookkeeping (.kbundle-staging, .kbundle-previous, .kbundle-source.json)",
                hint="Rename or remove that entry at the source, then restart the pod.",
            )
    single = entries[0] if len(entries) == 1 and entries[0].is_file() else None
    if source.sha256:
        if single is None:
            raise IntegrityError(
                f"{source.safe}: #sha256= needs a URI naming one file, got {len(entries)} entries",
                hint="Put the digest on an archive or single-file URI, or ship a SHA256SUMS in the model.",
            )
        actual = digest or checksums.file_sha256(single)
        checksums.check_digest(single.name, actual, source.sha256)
    if single is not None and is_archive(single.name):
        log.info("unpacking %s", single.name)
        archives.unpack(single, staging.model, settings)
        single.unlink()
        return
    staging.model.rmdir()
    staging.fetch.rename(staging.model)
    staging.fetch.mkdir()


def _census(dest: Path) -> tuple[int, int]:
    files = size = 0
    for name in model_entries(dest):
        if is_reserved(name):
            continue
        for root, _, names in os.walk(dest / name):
            for n in names:
                files += 1
                size += os.lstat(os.path.join(root, n)).st_size
        if (dest / name).is_file():
            files, size = files + 1, size + (dest / name).stat().st_size
    return files, size
