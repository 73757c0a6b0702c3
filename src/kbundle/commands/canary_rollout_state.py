"""The state file of `kbundle canary rollout`: what an interrupted rollout needs to resume.

It lives beside the manifest (`.NAME.rollout.json`, next to the link target when the manifest is
a symlink), is written with the one atomic write, and is held under an exclusive `flock` while a
rollout runs, so a second rollout of the same file is refused instead of racing the first.
It is removed when the rollout ends (promoted, rolled back or aborted).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kbundle.atomic import atomic_write


class RolloutBusy(Exception):
    """Another rollout of the same file holds the lock."""


@dataclass
class RolloutState:
    file: str
    storage_uri: str | None
    image: str | None
    steps: list[int]
    step: int = 0  # index into steps of the step in progress
    edited_step: int = -1  # the last step whose edit is written (and applied)
    step_started: float = 0.0  # when that edit went live: the bake counts from here
    holds: int = 0
    digest: str = ""  # the manifest as the rollout last wrote it (compare-before-write)
    pending: str = ""  # the digest of a write in flight (a crash between write and save)
    timeline: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def same_target(self, storage_uri: str | None, image: str | None, steps: list[int]) -> bool:
        return (self.storage_uri, self.image, self.steps) == (storage_uri, image, steps)


def state_path(manifest: Path) -> Path:
    real = Path(os.path.realpath(manifest))
    return real.with_name(f".{real.name}.rollout.json")


def load(manifest: Path) -> RolloutState | None:
    path = state_path(manifest)
    if not path.is_file():
        return None
    return RolloutState(**json.loads(path.read_text()))


def save(manifest: Path, state: RolloutState) -> None:
    atomic_write(state_path(manifest), json.dumps(asdict(state), indent=1))


def remove(manifest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(manifest).unlink()


@contextlib.contextmanager
def exclusive(manifest: Path) -> Iterator[None]:
    """One rollout per manifest: a non-blocking flock on a lock file beside the state file."""
    lock = state_path(manifest).with_suffix(".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RolloutBusy(
                f"another `kbundle canary rollout` of {manifest} is running (lock {lock})"
            ) from None
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            if not state_path(manifest).exists():
                lock.unlink()
