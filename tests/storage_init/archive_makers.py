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
        # The chain from issue 18: `a` is the root itself, so `a/.../escape` really sits at the root.
        "symlink-chain": [
            _special("a", tarfile.SYMTYPE, "."),
            _special("a/a/a/a/a/a/a/a/escape", tarfile.SYMTYPE, "../../../../../../../../evil.txt"),
        ],
        # Harmless when made (`b` does not exist yet); the later `b -> .` makes it leave the root.
        "symlink-late-chain": [
            _special("x", tarfile.SYMTYPE, "b/../evil.txt"),
            _special("b", tarfile.SYMTYPE, "."),
        ],
        "symlink-loop": [
            _special("l1", tarfile.SYMTYPE, "l2"),
            _special("l2", tarfile.SYMTYPE, "l1"),
        ],
        "hardlink-through-chain": [
            _special("a", tarfile.SYMTYPE, "."),
            _special("hl", tarfile.LNKTYPE, "a/a/a/a/../../../../../evil.txt"),
        ],
        "reserved-previous-dir": [_file(".kbundle-previous/model.onnx")],
        "reserved-previous-file": [_file(".kbundle-previous")],
        "reserved-staging-file": [_file(".kbundle-staging")],
        "reserved-staging-dir": [_file("./.kbundle-staging/fetch/model.onnx")],
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
            _zip_link(zf, "escape", "../../etc/passwd")
        elif attack == "zip-symlink-chain":
            _zip_link(zf, "a", ".")
            _zip_link(zf, "a/a/a/a/a/a/a/a/escape", "../../../../../../../../evil.txt")
        elif attack == "zip-symlink-late-chain":
            _zip_link(zf, "x", "b/../evil.txt")
            _zip_link(zf, "b", ".")
        elif attack == "zip-reserved-previous-dir":
            zf.writestr(".kbundle-previous/model.onnx", b"x")
        elif attack == "zip-reserved-staging-file":
            zf.writestr(".kbundle-staging", b"x")
        else:
            raise ValueError(attack)
    return out


def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    """A symlink as Info-ZIP stores it: Unix mode S_IFLNK, the target as the member's data."""
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    zf.writestr(info, target)


def linked_model_tar(src: Path, out: Path) -> Path:
    """A good model with the links real models have: `latest.onnx -> model.onnx`, a folder link,
    and a hard link reached through a link chain (`here -> .`, `here/here/model.onnx`)."""
    with tarfile.open(out, "w:gz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
        tar.addfile(_special("latest.onnx", tarfile.SYMTYPE, "model.onnx")[0])
        tar.addfile(_special("weights/current", tarfile.SYMTYPE, "..")[0])
        tar.addfile(_special("here", tarfile.SYMTYPE, ".")[0])
        tar.addfile(_special("copy.onnx", tarfile.LNKTYPE, "here/here/model.onnx")[0])
    return out


def linked_model_zip(src: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in sorted(src.iterdir()):
            zf.write(item, item.name)
        _zip_link(zf, "latest.onnx", "model.onnx")
        _zip_link(zf, "weights/current", "..")
    return out
