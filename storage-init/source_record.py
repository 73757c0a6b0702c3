"""What DEST holds: the source it came from, that source's version, and a stat fingerprint.

After a successful run, `DEST/.kbundle-source.json` records the source identity (the URI without
credentials or query, plus any `#sha256=`), the transport's validator for that version (HTTP
ETag / Last-Modified, the S3 listing's ETags, the sha256 of the model's SHA256SUMS) and every
model file's size and mtime. The next run trusts DEST's copy only while that fingerprint still
matches (a file changed, added or removed in DEST means a full fetch); the transport then asks
the source whether its version changed, and skips the transfer when it did not.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kbundle.storage_init.checksums import SUMS_FILE, file_sha256
from kbundle.storage_init.staging import RECORD, is_reserved
from kbundle.storage_init.uris import Source

log = logging.getLogger("kbundle.storage_init")
FORMAT = 1


def identity(source: Source) -> str:
    return source.safe + (f"#sha256={source.sha256}" if source.sha256 else "")


def fingerprint(model_dir: Path) -> dict[str, list[int]]:
    """relpath -> [size, mtime_ns] of every file and link (lstat), bookkeeping names excluded."""
    out: dict[str, list[int]] = {}
    for folder, dirs, files in os.walk(model_dir):
        if Path(folder) == model_dir:
            dirs[:] = [d for d in dirs if not is_reserved(d) and d != "lost+found"]
            files = [f for f in files if not is_reserved(f)]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            info = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), model_dir)] = [
                info.st_size,
                info.st_mtime_ns,
            ]
    return out


def sums_digest(model_dir: Path) -> str:
    """sha256 of the model's SHA256SUMS ('' without one): equal sums mean equal content."""
    sums = model_dir / SUMS_FILE
    return file_sha256(sums) if sums.is_file() else ""


def load(dest: Path, source: Source) -> dict | None:
    """The validator of DEST's copy of `source`, or None when DEST holds something else or was
    changed since it was written (then the model is fetched in full)."""
    try:
        record = json.loads((dest / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    if record.get("source") != identity(source):
        log.info("%s holds another source (%s): fetching", dest, record.get("source"))
        return None
    if record.get("files") != fingerprint(dest):
        log.info("%s changed since it was fetched (files differ from its record): fetching", dest)
        return None
    validator = record.get("validator")
    return validator if isinstance(validator, dict) else None


def write(model_dir: Path, source: Source, validator: dict) -> None:
    """Record `model_dir` (the verified staging copy, swapped into DEST with it)."""
    record = {
        "format": FORMAT,
        "source": identity(source),
        "validator": {**validator, "sums": sums_digest(model_dir)},
        "files": fingerprint(model_dir),
    }
    (model_dir / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
