"""Shared-memory slabs between a front-end worker and the engine owner (`--workers N`).

One slab per worker process, cut into fixed slots; a request's input tensors are written into a
free slot once by the worker and read as numpy views by the owner, whose outputs go back into the
rest of the same slot. A plain file in /dev/shm mapped with mmap (not multiprocessing's
SharedMemory: on Python 3.11 its resource tracker unlinks segments a process only attached to).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
SLOT_BYTES_ENV = "KBUNDLE_WORKERS_SLOT_BYTES"
SLOTS_ENV = "KBUNDLE_WORKERS_SLOTS"
DEFAULT_SLOT_BYTES = 1 << 20  # an MLP batch-1 request is ~1 KiB; a 224x224x3 FP32 image 0.6 MiB
DEFAULT_SLOTS = 32  # requests in flight per worker before the (pickled) fallback
ALIGN = 64
# (name, dtype str, shape, byte offset in the slab): how a tensor in a slab is described
Desc = tuple[str, str, tuple[int, ...], int]


@dataclass(frozen=True)
class SlabSize:
    slot_bytes: int
    slots: int

    @property
    def total(self) -> int:
        return self.slot_bytes * self.slots

    @classmethod
    def from_env(cls) -> SlabSize:
        return cls(
            int(os.environ.get(SLOT_BYTES_ENV, DEFAULT_SLOT_BYTES)),
            int(os.environ.get(SLOTS_ENV, DEFAULT_SLOTS)),
        )


def shm_shortage(workers: int, size: SlabSize, folder: Path = SHM_DIR) -> str | None:
    """None when `folder` has room for every worker's slab plus one for a restart, else the one
    line that says what to mount."""
    need = (workers + 1) * size.total
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if free >= need:
        return None
    mib = -(-need // (1 << 20))
    return (
        f"error: --workers {workers} needs {mib} MiB of shared memory in {folder}, "
        f"{free >> 20} MiB free: mount an emptyDir with medium: Memory at /dev/shm "
        f"(sizeLimit >= {mib}Mi), or lower --workers"
    )


class Slab:
    """A mapped /dev/shm file; the creator unlinks it (the owner too, if the creator died)."""

    def __init__(self, path: Path, size: SlabSize, create: bool):
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size.total)
            self.buf = mmap.mmap(fd, size.total)
        finally:
            os.close(fd)
        self.path, self.size = path, size
        self._free: deque[int] = deque(range(size.slots))
        self._lock = threading.Lock()

    def unlink(self) -> None:
        """Drop the name; the mapping stays valid for calls still running on it."""
        self.path.unlink(missing_ok=True)

    # -- slots (worker side) ---------------------------------------------------------------
    def acquire(self) -> int | None:
        with self._lock:
            return self._free.popleft() if self._free else None

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    # -- tensors ---------------------------------------------------------------------------
    def write(self, slot: int, arrays: dict[str, np.ndarray], start: int = 0) -> list[Desc] | None:
        """Copy `arrays` into `slot` from byte `start`; None when they do not fit (or are not
        plain numbers: BYTES tensors travel pickled)."""
        base, end = slot * self.size.slot_bytes, (slot + 1) * self.size.slot_bytes
        offset, descs = base + start, []
        for name, array in arrays.items():
            if array.dtype.hasobject:
                return None
            offset = -(-offset // ALIGN) * ALIGN
            if offset + array.nbytes > end:
                return None
            view = np.ndarray(array.shape, array.dtype, self.buf, offset)
            view[...] = array
            descs.append((name, array.dtype.str, array.shape, offset))
            offset += array.nbytes
        return descs

    def views(self, descs: list[Desc]) -> dict[str, np.ndarray]:
        return {
            name: np.ndarray(shape, np.dtype(dtype), self.buf, offset)
            for name, dtype, shape, offset in descs
        }

    def copies(self, descs: list[Desc]) -> dict[str, np.ndarray]:
        """Owned copies (the slot is reused once released)."""
        return {name: view.copy() for name, view in self.views(descs).items()}

    def used(self, slot: int, descs: list[Desc]) -> int:
        """Bytes of `slot` taken by `descs` (where the owner's outputs may start)."""
        if not descs:
            return 0
        _, dtype, shape, offset = descs[-1]
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize  # np.prod is slow on a short tuple
        return offset + nbytes - slot * self.size.slot_bytes


class QueueGauge:
    """The owner's queue depth, published for the workers: one int64 in a /dev/shm file. The
    owner writes it as its queue changes; a worker reads it to refuse a request before decoding
    it when the queue is full. The owner's own check stays the authority: a value read a moment
    late (or, in theory, torn) only moves that one refusal to the owner, after the decode."""

    VALUE = struct.Struct("=q")

    def __init__(self, path: Path, create: bool):
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC if create else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, self.VALUE.size)
            access = mmap.ACCESS_WRITE if create else mmap.ACCESS_READ
            self.buf = mmap.mmap(fd, self.VALUE.size, access=access)
        finally:
            os.close(fd)
        self.path = path

    def set(self, value: int) -> None:
        self.VALUE.pack_into(self.buf, 0, value)

    def get(self) -> int:
        return self.VALUE.unpack_from(self.buf, 0)[0]

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)
