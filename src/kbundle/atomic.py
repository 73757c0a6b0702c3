"""THE atomic file write of kbundle: readers see the old file or the new one, never a torn one,
and an edit never silently overwrites an edit made since the caller read the file.

`atomic_write(path, data, expect_digest=...)`:
- follows symlinks: the link's target is replaced, the link stays a link;
- writes a temp file in the target's folder, fsyncs it, keeps the file's mode, renames it over
  the target and fsyncs the folder; on any failure the temp file is removed and the original
  is untouched;
- with `expect_digest` (from `read_with_digest`), compares before writing under an exclusive
  `flock` on the target itself (no lock files left beside a user's manifests), so of two
  concurrent read-edit-write cycles one wins and the other gets `FileChanged`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class FileChanged(Exception):
    """The file is not what the caller read: someone else edited it in between."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_with_digest(path: Path) -> tuple[bytes, str]:
    """The bytes of `path` (through links) and the digest to hand back to `atomic_write`."""
    data = Path(path).read_bytes()
    return data, digest(data)


def atomic_write(path: Path, data: bytes | str, *, expect_digest: str | None = None) -> None:
    """Replace the file at `path` (its link target if a symlink) with `data`, atomically.

    Raises FileChanged (nothing written) when `expect_digest` no longer matches the file;
    OSError (nothing written, no temp file left) when the write itself fails.
    """
    real = Path(os.path.realpath(path))
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with _locked(real):
        if expect_digest is not None:
            current = digest(real.read_bytes()) if real.exists() else ""
            if current != expect_digest:
                raise FileChanged(
                    f"{path} changed since it was read (another edit?); nothing written, run again"
                )
        _replace(real, payload)


@contextlib.contextmanager
def _locked(real: Path) -> Iterator[None]:
    """An exclusive flock on the file now at `real` (re-taken if it was replaced meanwhile)."""
    if not real.exists():
        yield
        return
    while True:
        fd = os.open(real, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(real).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)  # closing drops the lock


def _replace(real: Path, payload: bytes) -> None:
    mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else None
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(real.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (not possible on every platform/filesystem)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
