"""Safe unpacking of .tar(.gz|.bz2|.xz), .tgz and .zip model archives.

Every member is checked before it is written: relative path staying inside the target, links
(tar only) resolving inside it, no device/FIFO files, no duplicate names, and running totals of
files and unpacked bytes against the limits (bytes are counted as written, so a zip that lies
about its sizes is still stopped). Any violation raises ArchiveError naming the member; the
caller throws the whole staging dir away, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import ArchiveError, SpaceError


@dataclass
class _Budget:
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


def unpack(archive: Path, target: Path, settings: StorageSettings) -> None:
    """Unpack `archive` into the empty dir `target` (same filesystem as the model mount)."""
    budget = _Budget(
        settings.max_bytes, settings.max_files, archive.name, shutil.disk_usage(target).free
    )
    try:
        if archive.name.lower().endswith(".zip"):
            _unzip(archive, target, budget, settings.chunk_bytes)
        else:
            _untar(archive, target, budget, settings.chunk_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArchiveError(
            f"{archive.name}: not a valid archive or truncated ({exc})",
            hint="Re-create and re-upload the archive, then restart the pod.",
        ) from exc


def _member_path(target: Path, name: str, archive: str) -> Path:
    """The on-disk path for member `name`, refusing absolute paths and `..` escapes."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    norm = posixpath.normpath(clean)
    if norm == ".." or norm.startswith("../"):
        raise ArchiveError(f"{archive}: member {name!r} escapes the model directory")
    path = target / norm
    _inside(target, path.parent, name, archive)
    return path


def _inside(target: Path, path: Path, name: str, archive: str) -> None:
    """Resolve on-disk links too: a link extracted earlier must not carry a write outside."""
    real, root = os.path.realpath(path), os.path.realpath(target)
    if real != root and not real.startswith(root + os.sep):
        raise ArchiveError(f"{archive}: member {name!r} resolves outside the model directory")


def _write(src: IO[bytes], path: Path, budget: _Budget, name: str, chunk: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(
            f"{budget.archive}: member {name!r} appears twice or overwrites a link"
        ) from None
    with os.fdopen(fd, "wb") as out:
        while block := src.read(chunk):
            budget.add_bytes(name, len(block))
            out.write(block)


def _untar(archive: Path, target: Path, budget: _Budget, chunk: int) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            budget.add_file(member.name)
            path = _member_path(target, member.name, archive.name)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isreg():
                _write(tar.extractfile(member), path, budget, member.name, chunk)
            elif member.issym() or member.islnk():
                _link(target, path, member, archive.name)
            else:
                raise ArchiveError(
                    f"{archive.name}: member {member.name!r} is a device, FIFO or other special file"
                )
            tar.members.clear()  # streaming: keep memory flat for archives with many members


def _link(target: Path, path: Path, member: tarfile.TarInfo, archive: str) -> None:
    if member.issym():
        dest = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
    else:
        dest = posixpath.normpath(member.linkname)
    if member.linkname.startswith("/") or dest == ".." or dest.startswith("../"):
        kind = "symlink" if member.issym() else "hardlink"
        raise ArchiveError(
            f"{archive}: {kind} {member.name!r} -> {member.linkname!r} points outside the model directory"
        )
    _inside(target, target / dest, member.name, archive)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        raise ArchiveError(f"{archive}: member {member.name!r} appears twice")
    if member.issym():
        os.symlink(member.linkname, path)
    else:
        source = target / dest
        if not source.is_file() or source.is_symlink():
            raise ArchiveError(
                f"{archive}: hardlink {member.name!r} -> {member.linkname!r} names no earlier regular file"
            )
        os.link(source, path)


def _unzip(archive: Path, target: Path, budget: _Budget, chunk: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > budget.max_files:
            raise ArchiveError(
                f"{archive.name}: {len(infos)} entries, more than {budget.max_files}; refused as a possible archive bomb"
            )
        budget.check_bytes(
            sum(i.file_size for i in infos), " (sizes declared in the zip directory)"
        )
        for info in infos:
            budget.add_file(info.filename)
            path = _member_path(target, info.filename, archive.name)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
            elif kind == stat.S_IFLNK:
                raise ArchiveError(
                    f"{archive.name}: member {info.filename!r} is a symlink; zip links are not supported"
                )
            elif kind not in (0, stat.S_IFREG):
                raise ArchiveError(
                    f"{archive.name}: member {info.filename!r} is a device, FIFO or other special file"
                )
            else:
                with zf.open(info) as src:
                    _write(src, path, budget, info.filename, chunk)
