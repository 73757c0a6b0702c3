"""Local paths and file:// URIs (a PVC mounted at /mnt/pvc/...): copied, never symlinked.

kserve-storage links local files into the model dir; a link into a PVC breaks when the model
server sees another mount layout, and a later write through it would modify the source.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from kbundle.storage_init.errors import FetchError, NotFoundError
from kbundle.storage_init.progress import Progress
from kbundle.storage_init.staging import PREVIOUS, STAGING


def patterns(name: str) -> list[str]:
    """KServe's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS: a JSON list or comma-separated."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return []
    try:
        value = json.loads(raw)
        return [str(p) for p in (value if isinstance(value, list) else [value])]
    except ValueError:
        return [p.strip() for p in raw.split(",") if p.strip()]


def wanted(rel: str, allow: list[str], ignore: list[str]) -> bool:
    if allow and not any(fnmatch.fnmatch(rel, p) for p in allow):
        return False
    return not any(fnmatch.fnmatch(rel, p) for p in ignore)


def copy(path: str, dest_dir: Path, interval_s: float) -> list[Path]:
    """Copy a file or a directory tree into `dest_dir`; returns the files written."""
    src = Path(path)
    if not src.exists():
        raise NotFoundError(
            f"local path {path} does not exist",
            hint="Check the path (and that its PVC is mounted).",
        )
    pairs = [(src, dest_dir / src.name)] if src.is_file() else _tree(src, dest_dir)
    if not pairs:
        raise FetchError(
            f"local path {path} holds no files to copy",
            hint="Check the path and STORAGE_*_PATTERNS.",
        )
    progress = Progress(f"copy {path}", sum(s.stat().st_size for s, _ in pairs), interval_s)
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # sendfile/copy_file_range: no file-sized buffers
        progress.update(target.stat().st_size)
    progress.finish()
    return [t for _, t in pairs]


def _tree(src: Path, dest_dir: Path) -> list[tuple[Path, Path]]:
    allow, ignore = patterns("STORAGE_ALLOW_PATTERNS"), patterns("STORAGE_IGNORE_PATTERNS")
    pairs = []
    for root, dirs, files in os.walk(src):
        # A source that is itself some DEST_DIR: skip our bookkeeping dirs.
        dirs[:] = sorted(d for d in dirs if d not in (STAGING, PREVIOUS))
        for name in sorted(files):
            source = Path(root) / name
            rel = source.relative_to(src).as_posix()
            if wanted(rel, allow, ignore):
                pairs.append((source, dest_dir / rel))
    return pairs
