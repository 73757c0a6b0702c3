"""Integrity: file digests and the model's own `SHA256SUMS` (the format `sha256sum` writes)."""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from pathlib import Path

from kbundle.storage_init.errors import IntegrityError

log = logging.getLogger("kbundle.storage_init")
SUMS_FILE = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def file_sha256(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_digest(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise IntegrityError(f"{name}: sha256 {actual} does not match the expected {expected}")
    log.info("%s: sha256 matches %s", name, expected)


def parse_sums(text: str) -> list[tuple[str, str]]:
    """(digest, relative path) pairs; IntegrityError on a malformed line or an escaping path."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line.rstrip("\r"))
        if not match:
            raise IntegrityError(
                f"{SUMS_FILE} line {number}: expected '<64 hex>  <path>', got {line[:80]!r}"
            )
        rel = posixpath.normpath(match.group(2).removeprefix("./"))
        if rel.startswith(("/", "../")) or rel == "..":
            raise IntegrityError(
                f"{SUMS_FILE} line {number}: path {match.group(2)!r} leaves the model directory"
            )
        entries.append((match.group(1).lower(), rel))
    return entries


def verify_model(model_dir: Path) -> int:
    """Check every file listed in `model_dir/SHA256SUMS`; returns how many (0 without the file)."""
    sums = model_dir / SUMS_FILE
    if not sums.is_file():
        log.info("no %s in the model: contents not verified", SUMS_FILE)
        return 0
    try:
        entries = parse_sums(sums.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IntegrityError(
            f"{SUMS_FILE} is not UTF-8 text (byte {exc.start} is {sums.read_bytes()[exc.start : exc.start + 1]!r})",
            hint="Write SHA256SUMS with `sha256sum` (UTF-8 file names) and re-upload the model.",
        ) from None
    for expected, rel in entries:
        path = model_dir / rel
        if not path.is_file():
            raise IntegrityError(f"{SUMS_FILE} lists {rel!r}, which is not in the model")
        actual = file_sha256(path)
        if actual != expected:
            raise IntegrityError(
                f"{rel}: sha256 {actual} does not match {expected} from {SUMS_FILE}"
            )
    log.info("%s: %d files verified", SUMS_FILE, len(entries))
    return len(entries)
