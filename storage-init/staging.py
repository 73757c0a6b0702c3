"""Atomic replacement of DEST_DIR's contents from a hidden staging dir inside it.

The top-level names in RESERVED are storage-init's own (staging, previous version, source
record); the archive extractor and `_materialize` refuse model entries with those names, so
content can never collide with the bookkeeping the swap relies on.

DEST_DIR is usually a mount point (KServe's emptyDir at /mnt/models), so it cannot itself be
renamed: the staging dir lives inside it (same filesystem, so every move is a rename) and the
swap moves entries one by one. A PHASE file makes the swap restartable: if the container is
killed mid-swap, the next run finishes it from the verified staging copy (`recover`), and a
fetch that never reached "verified" is simply deleted. Readers only look at DEST after the init
container exits 0, so they never see a half-swapped directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from kbundle.atomic import atomic_write

log = logging.getLogger("kbundle.storage_init")
STAGING = ".kbundle-staging"
PREVIOUS = ".kbundle-previous"
RECORD = ".kbundle-source.json"  # what DEST holds (skip.py); swapped in and out with the model
RESERVED = (STAGING, PREVIOUS, RECORD)
_NOT_MODEL = (STAGING, PREVIOUS, "lost+found")
VERIFIED, OLD_MOVED, NEW_MOVED = "verified", "old-moved", "new-moved"


class Staging:
    """`root` = DEST/.kbundle-staging with `fetch/`, `model/` and `tmp/` inside."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.root = dest / STAGING
        self.fetch, self.model, self.tmp = (
            self.root / "fetch",
            self.root / "model",
            self.root / "tmp",
        )

    def create(self) -> None:
        for path in (self.fetch, self.model, self.tmp):
            path.mkdir(parents=True)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def phase(self) -> str:
        try:
            return (self.root / "PHASE").read_text().strip()
        except OSError:
            return ""

    def _set_phase(self, phase: str) -> None:
        atomic_write(self.root / "PHASE", phase)

    def commit(self) -> None:
        """Swap the verified `model/` into DEST; on an OSError put everything back and re-raise."""
        new_names = sorted(os.listdir(self.model))
        self._set_phase(VERIFIED)
        try:
            self._finish()
        except OSError:
            self._rollback(new_names)
            raise

    def _finish(self) -> None:
        previous = self.dest / PREVIOUS
        if self.phase == VERIFIED:
            previous.mkdir(exist_ok=True)
            for name in model_entries(self.dest):
                os.rename(self.dest / name, previous / name)
            self._set_phase(OLD_MOVED)
        if self.phase == OLD_MOVED:
            for name in sorted(os.listdir(self.model)):
                os.rename(self.model / name, self.dest / name)
            self._set_phase(NEW_MOVED)
        shutil.rmtree(previous, ignore_errors=True)
        self.discard()

    def _rollback(self, new_names: list[str]) -> None:
        previous = self.dest / PREVIOUS
        for name in new_names:
            if (self.dest / name).exists() or (self.dest / name).is_symlink():
                os.rename(self.dest / name, self.model / name)
        if previous.is_dir():
            for name in os.listdir(previous):
                os.rename(previous / name, self.dest / name)
            previous.rmdir()
        self.discard()


def is_reserved(name: str) -> bool:
    """Top-level names storage-init keeps for itself; no model entry may use one."""
    return name.casefold() in RESERVED


def model_entries(dest: Path) -> list[str]:
    """What counts as the served model in DEST: everything but our own bookkeeping dirs."""
    return sorted(n for n in os.listdir(dest) if n not in _NOT_MODEL)


def recover(dest: Path) -> None:
    """Finish a swap a killed run left verified; delete any other leftovers."""
    staging = Staging(dest)
    if staging.phase in (VERIFIED, OLD_MOVED, NEW_MOVED):
        log.warning(
            "%s: finishing a model swap an earlier run left at phase %r", dest, staging.phase
        )
        staging._finish()
    elif staging.root.exists():
        log.warning("%s: removing an unfinished download left by an earlier run", dest)
        staging.discard()
    shutil.rmtree(dest / PREVIOUS, ignore_errors=True)
