"""Where archive members really land: every write and link checked against the model root.

One `Extractor` serves tar and zip alike, so a rule cannot hold for one format and not the other:
- member names are relative, without `..` escapes, and never one of the reserved bookkeeping names;
- a member's folder is resolved through the links already on disk (`realpath`), so `a -> .`
  followed by `a/a/a/x` is judged where it really is (the root), not where its name suggests;
- a symlink's target is resolved from that real folder; a hard link's source likewise;
- after the last member, every symlink is resolved once more as a whole chain, so a link made
  harmless-looking by a later one (`x -> b/..`, then `b -> .`) is caught; link loops are refused.
Running totals of entries and bytes (counted as written) stop archive bombs.
"""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kbundle.storage_init.errors import ArchiveError, SpaceError
from kbundle.storage_init.staging import is_reserved

MAX_LINK_TARGET = 4096


@dataclass
class Budget:
    max_bytes: int
    max_files: int
    archive: str
    free: int
    files: int = 0
    bytes: int = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise ArchiveError(
                f"{self.archive}: more than {self.max_files} entries (at {name!r}); refused as a possible archive bomb"
            )

    def add_bytes(self, name: str, n: int) -> None:
        self.bytes += n
        self.check_bytes(self.bytes, f" (at {name!r})")

    def check_bytes(self, size: int, where: str = "") -> None:
        if size > self.free:
            raise SpaceError(
                f"{self.archive}: unpacks to more than the {self.free} bytes free on the model volume{where}"
            )
        if size > self.max_bytes:
            raise ArchiveError(
                f"{self.archive}: unpacks to more than {self.max_bytes} bytes{where}; refused as a possible archive bomb"
            )


def check_name(name: str, archive: str) -> str:
    """The normalized relative path of member `name`; ArchiveError for absolute, `..` or reserved."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    norm = posixpath.normpath(clean)
    if norm == ".." or norm.startswith("../"):
        raise ArchiveError(f"{archive}: member {name!r} escapes the model directory")
    if is_reserved(norm.split("/")[0]):
        raise ArchiveError(
            f"{archive}: member {name!r} uses the name {norm.split('/')[0]!r}, reserved for "
            "storage-init's own bookkeeping (.kbundle-staging, .kbundle-previous, .kbundle-source.json)"
        )
    return norm


class Extractor:
    """Writes members under `target` (an empty dir), refusing any that would land outside it."""

    def __init__(self, target: Path, budget: Budget, chunk: int):
        self.target, self.budget, self.chunk = target, budget, chunk
        self.root = os.path.realpath(target)
        self.archive = budget.archive
        self.links = 0

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _rel(self, real: str) -> str:
        return os.path.relpath(real, self.root)

    def _path(self, name: str) -> Path:
        """Member path, after checking its real folder (through links on disk) is inside."""
        self.budget.add_file(name)
        path = self.target / check_name(name, self.archive)
        if not self._inside(os.path.realpath(path.parent)):
            raise ArchiveError(
                f"{self.archive}: member {name!r} resolves outside the model directory"
            )
        return path

    def _fresh(self, path: Path, name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            raise ArchiveError(
                f"{self.archive}: member {name!r} appears twice or overwrites a link"
            )

    def directory(self, name: str) -> None:
        path = self._path(name)
        if path.is_symlink():
            raise ArchiveError(f"{self.archive}: directory {name!r} would replace a link")
        path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str, src: IO[bytes]) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            raise ArchiveError(
                f"{self.archive}: member {name!r} appears twice or overwrites a link"
            ) from None
        with os.fdopen(fd, "wb") as out:
            while block := src.read(self.chunk):
                self.budget.add_bytes(name, len(block))
                out.write(block)

    def symlink(self, name: str, linkname: str) -> None:
        """A symlink whose target, read from the link's real folder, stays inside the root."""
        path = self._path(name)
        if not linkname or linkname.startswith("/") or len(linkname) > MAX_LINK_TARGET:
            raise self._outside("symlink", name, linkname)
        real_dir = os.path.realpath(path.parent)
        lands = os.path.realpath(os.path.join(real_dir, linkname))
        if not self._inside(lands):
            raise self._outside("symlink", name, linkname, real_dir)
        self._fresh(path, name)
        os.symlink(linkname, path)
        self.links += 1

    def hardlink(self, name: str, linkname: str) -> None:
        """A hard link to an earlier regular file; its path is resolved through links on disk."""
        path = self._path(name)
        rel = posixpath.normpath(linkname.replace("\\", "/"))
        if linkname.startswith("/") or rel == ".." or rel.startswith("../"):
            raise self._outside("hardlink", name, linkname)
        source = os.path.realpath(self.target / rel)
        if not self._inside(source):
            raise self._outside("hardlink", name, linkname)
        if not os.path.isfile(source):
            raise ArchiveError(
                f"{self.archive}: hardlink {name!r} -> {linkname!r} names no earlier regular file"
            )
        self._fresh(path, name)
        os.link(source, path, follow_symlinks=False)

    def _outside(self, kind: str, name: str, linkname: str, real_dir: str = "") -> ArchiveError:
        where = ""
        if real_dir and self._rel(real_dir) != posixpath.dirname(posixpath.normpath(name)):
            where = f" (its real folder is {self._rel(real_dir)!r}, through the links before it)"
        return ArchiveError(
            f"{self.archive}: {kind} {name!r} -> {linkname!r} points outside the model directory{where}"
        )

    def finish(self) -> None:
        """Resolve every symlink as a whole chain, now that no member can change it any more."""
        if not self.links:
            return
        for folder, dirs, files in os.walk(self.target):
            for entry in dirs + files:
                path = os.path.join(folder, entry)
                if os.path.islink(path):
                    self._check_final(path)

    def _check_final(self, path: str) -> None:
        rel = self._rel(path)
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArchiveError(
                    f"{self.archive}: symlink {rel!r} is part of a link loop"
                ) from None
        if not self._inside(os.path.realpath(path)):
            raise ArchiveError(
                f"{self.archive}: symlink {rel!r} -> {os.readlink(path)!r} points outside the model "
                "directory through the links around it"
            )
