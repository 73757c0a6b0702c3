"""Hostile archives over real HTTP: each is refused by name, DEST stays as it was, nothing escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from archive_makers import hostile_tar, hostile_zip
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
    "big": "unpacks to more than 10485760 bytes",
}
ZIP_ATTACKS = {
    "zip-dotdot": "escapes the model directory",
    "zip-absolute": "absolute path",
    "zip-bomb": "unpacks to more than 10485760 bytes",
    "zip-symlink": "zip links are not supported",
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
    assert result.rc == 1, result.log
    expected = {**TAR_ATTACKS, **ZIP_ATTACKS}[attack]
    assert "storage-init failed" in result.last_line and expected in result.last_line, result.log
    assert "What to do" in result.last_line
    assert tree(sandbox.dest) == before
    assert sandbox.outside_dest() == {}
    assert not list(sandbox.root.rglob("evil.txt")) and not list(Path("/tmp").glob("evil.txt"))
