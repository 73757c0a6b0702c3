"""Committed copies of the files a user is told to edit (inferenceservices/, kbundle.yaml...).

The README walks a user through `kbundle canary set inferenceservices/digits.yaml`, which edits
that file in place. Tests never read the working copy: they read the version committed at HEAD,
extracted once per process into a temporary folder (a plain copy when there is no git checkout).
"""

from __future__ import annotations

import atexit
import io
import shutil
import subprocess
import tarfile
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="kbundle-pristine-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@cache
def committed(rel: str) -> Path:
    """`rel` (a file or folder under the repository) as committed at HEAD, in a temp folder."""
    dest = _root() / rel
    try:
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", "--", rel],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        _copy(REPO / rel, dest)  # not a git checkout (an sdist): the files as shipped
        return dest
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(_root(), filter="data")
    return dest


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)
