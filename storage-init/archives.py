"""Safe unpacking of .tar(.gz|.bz2|.xz), .tgz and .zip model archives.

Both formats feed one `extract_guard.Extractor`, which checks every member before it is written:
relative path inside the target (resolved through links already extracted), no reserved
bookkeeping names, symlinks and hard links landing inside, no device/FIFO files, no duplicates,
and running totals of entries and unpacked bytes against the limits (bytes are counted as
written, so a zip that lies about its sizes is still stopped). A zip's names are all checked up
front, before anything is written. Any violation raises ArchiveError naming the member; the
caller throws the whole staging dir away, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import lzma
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import VOLUME_ERRNOS, ArchiveError, volume_error
from kbundle.storage_init.extract_guard import MAX_LINK_TARGET, Budget, Extractor, check_name

_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def unpack(archive: Path, target: Path, settings: StorageSettings) -> None:
    """Unpack `archive` into the empty dir `target` (same filesystem as the model mount)."""
    budget = Budget(
        settings.max_bytes, settings.max_files, archive.name, shutil.disk_usage(target).free
    )
    extractor = Extractor(target, budget, settings.chunk_bytes)
    try:
        if archive.name.lower().endswith(".zip"):
            _unzip(archive, extractor)
        else:
            _untar(archive, extractor)
        extractor.finish()
    except _CORRUPT as exc:
        if isinstance(exc, OSError) and exc.errno in VOLUME_ERRNOS:
            raise volume_error(exc) from exc
        raise ArchiveError(
            f"{archive.name}: not a valid archive or truncated ({exc})",
            hint="Re-create and re-upload the archive, then restart the pod.",
        ) from exc


def _untar(archive: Path, ex: Extractor) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isdir():
                ex.directory(member.name)
            elif member.isreg():
                ex.file(member.name, tar.extractfile(member))
            elif member.issym():
                ex.symlink(member.name, member.linkname)
            elif member.islnk():
                ex.hardlink(member.name, member.linkname)
            else:
                raise ArchiveError(
                    f"{archive.name}: member {member.name!r} is a device, FIFO or other special file"
                )
            tar.members.clear()  # streaming: keep memory flat for archives with many members


def _unzip(archive: Path, ex: Extractor) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > ex.budget.max_files:
            raise ArchiveError(
                f"{archive.name}: {len(infos)} entries, more than {ex.budget.max_files}; refused as a possible archive bomb"
            )
        ex.budget.check_bytes(
            sum(i.file_size for i in infos), " (sizes declared in the zip directory)"
        )
        for info in infos:  # every name checked before anything is written
            check_name(info.filename, archive.name)
        for info in infos:
            _unzip_member(zf, info, ex, archive.name)


def _unzip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, ex: Extractor, archive: str) -> None:
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
    if info.is_dir():
        ex.directory(info.filename)
    elif kind == stat.S_IFLNK:  # Info-ZIP stores the link target as the member's data
        with zf.open(info) as src:
            raw = src.read(MAX_LINK_TARGET + 1)
        try:
            ex.symlink(info.filename, raw.decode("utf-8") if len(raw) <= MAX_LINK_TARGET else "")
        except UnicodeDecodeError:
            raise ArchiveError(
                f"{archive}: symlink {info.filename!r} has a non-UTF-8 target"
            ) from None
    elif kind not in (0, stat.S_IFREG):
        raise ArchiveError(
            f"{archive}: member {info.filename!r} is a device, FIFO or other special file"
        )
    else:
        with zf.open(info) as src:
            ex.file(info.filename, src)
