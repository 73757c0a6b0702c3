"""Hostile archives over real HTTP: each is refused by name, DEST stays as it was, nothing escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from archive_makers import hostile_tar, hostile_zip, linked_model_tar, linked_model_zip
from storage_sandbox import Sandbox, install_model
from storage_servers import tree

TAR_ATTACKS = {
    "dotdot": "escapes the model directory",
    "deep-dotdot": "escapes the model directory",
    "absolute": "absolute path",
    "symlink-out": "points outside the model directory",
    "symlink-abs": "points outside the model directory",
    "hardlink-out": "points outside the model directory",
    "device": "device, FIFO or other special file",
    "fifo": "device, FIFO or other special file",
    "duplicate-through-link": "appears twice or overwrites a link",
    "many-files": "more than 20 entries",
    "symlink-chain": "points outside the model directory (its real folder is '.'",
    "symlink-late-chain": "points outside the model directory through the links around it",
    "symlink-loop": "is part of a link loop",
    "hardlink-through-chain": "points outside the model directory",
    "reserved-previous-dir": "reserved for storage-init's own bookkeeping",
    "reserved-previous-file": "reserved for storage-init's own bookkeeping",
    "reserved-staging-file": "reserved for storage-init's own bookkeeping",
    "reserved-staging-dir": "reserved for storage-init's own bookkeeping",
    "big": "unpacks to more than 10485760 bytes",
}
ZIP_ATTACKS = {
    "zip-dotdot": "escapes the model directory",
    "zip-absolute": "absolute path",
    "zip-bomb": "unpacks to more than 10485760 bytes",
    "zip-symlink": "points outside the model directory",
    "zip-symlink-chain": "points outside the model directory (its real folder is '.'",
    "zip-symlink-late-chain": "points outside the model directory through the links around it",
    "zip-reserved-previous-dir": "reserved for storage-init's own bookkeeping",
    "zip-reserved-staging-file": "reserved for storage-init's own bookkeeping",
}
LIMITS = {"KBUNDLE_STORAGE_MAX_FILES": "20", "KBUNDLE_STORAGE_MAX_BYTES": str(10 * 1024 * 1024)}


@pytest.fixture(scope="module")
def hostile(www: Path) -> dict[str, str]:
    names = {}
    for attack in TAR_ATTACKS:
        names[attack] = hostile_tar(www / f"attack-{attack}.tar.gz", attack).name
    for attack in ZIP_ATTACKS:
        names[attack] = hostile_zip(www / f"attack-{attack}.zip", attack).name
    return names


@pytest.mark.parametrize("attack", [*TAR_ATTACKS, *ZIP_ATTACKS])
def test_hostile_archive_is_refused(
    sandbox: Sandbox, http_server, hostile, digits_v1: Path, attack: str
) -> None:
    install_model(digits_v1, sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run(
        f"{http_server.url}/files/{hostile[attack]}", str(sandbox.dest), env=LIMITS
    )
    assert result.rc == 13, result.log  # bad-archive
    expected = {**TAR_ATTACKS, **ZIP_ATTACKS}[attack]
    assert "storage-init failed" in result.last_line and expected in result.last_line, result.log
    assert "What to do" in result.last_line
    assert tree(sandbox.dest) == before
    assert sandbox.outside_dest() == {}
    assert not list(sandbox.root.rglob("evil.txt")) and not list(Path("/tmp").glob("evil.txt"))
    # The previous model survives the next run too, even one that fails (it used to be deleted).
    again = sandbox.run(f"{http_server.url}/files/no-such.tar.gz", str(sandbox.dest))
    assert again.rc == 10 and tree(sandbox.dest) == before, again.log


@pytest.mark.parametrize("maker", [linked_model_tar, linked_model_zip])
def test_links_inside_the_model_are_kept(
    sandbox: Sandbox, http_server, www: Path, digits_v1: Path, maker
) -> None:
    archive = maker(
        digits_v1, www / f"linked-{maker.__name__}.{'zip' if 'zip' in maker.__name__ else 'tar.gz'}"
    )
    result = sandbox.run(f"{http_server.url}/files/{archive.name}", str(sandbox.dest))
    assert result.rc == 0, result.log
    dest = sandbox.dest
    assert os.readlink(dest / "latest.onnx") == "model.onnx"
    assert (dest / "latest.onnx").read_bytes() == (digits_v1 / "model.onnx").read_bytes()
    assert (dest / "weights" / "current").resolve() == dest.resolve()
    if maker is linked_model_tar:  # the hard link, reached through `here -> .`, is the real file
        assert os.stat(dest / "copy.onnx").st_ino == os.stat(dest / "model.onnx").st_ino
