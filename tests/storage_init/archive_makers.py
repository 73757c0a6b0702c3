"""Build good and hostile archives for the storage-init tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def tar_of_dir(src: Path, out: Path) -> Path:
    """`tar -czf out -C src .`: what a user would upload."""
    with tarfile.open(out, "w:gz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
    return out


def zip_of_dir(src: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in sorted(src.iterdir()):
            zf.write(item, item.name)
    return out


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def hostile_tar(out: Path, attack: str) -> Path:
    """A .tar.gz holding a harmless file, then the attack member(s)."""
    members = [_file("model.onnx", b"not really onnx")]
    members += {
        "dotdot": [_file("../evil.txt")],
        "deep-dotdot": [_file("sub/../../../evil.txt")],
        "absolute": [_file("/tmp/evil.txt")],
        "symlink-out": [_special("escape", tarfile.SYMTYPE, "../../"), _file("escape/evil.txt")],
        "symlink-abs": [_special("passwd", tarfile.SYMTYPE, "/etc/passwd")],
        "hardlink-out": [_special("hl", tarfile.LNKTYPE, "../../evil.txt")],
        "device": [_special("null", tarfile.CHRTYPE)],
        "fifo": [_special("pipe", tarfile.FIFOTYPE)],
        "duplicate-through-link": [
            _special("model.bin", tarfile.SYMTYPE, "model.onnx"),
            _file("model.bin"),
        ],
        "many-files": [_file(f"f{i}.txt", b"") for i in range(50)],
        "big": [_file("weights.bin", bytes(20 * 1024 * 1024))],
    }[attack]
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def hostile_zip(out: Path, attack: str) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", b"not really onnx")
        if attack == "zip-dotdot":
            zf.writestr("../evil.txt", b"pwned\n")
        elif attack == "zip-absolute":
            zf.writestr("/tmp/evil.txt", b"pwned\n")
        elif attack == "zip-bomb":
            zf.writestr("weights.bin", bytes(64 * 1024 * 1024))  # ~64 KiB compressed
        elif attack == "zip-symlink":
            info = zipfile.ZipInfo("escape")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "../../etc/passwd")
        else:
            raise ValueError(attack)
    return out
