"""A process-wide budget on bytes being decoded at once, so N small files cannot add up.

An image's decode cost is known from its header before any pixel is decoded (`decode_cost`);
a request takes the summed cost of its images from the budget before decoding and gives it back
when its tensor is built. A request that does not fit waits up to `KBUNDLE_DECODE_WAIT_MS` and is
then refused with QueueFull (429 / RESOURCE_EXHAUSTED); one larger than the whole budget is a 400.

Budget: env `KBUNDLE_DECODE_BUDGET_BYTES`, else a quarter of the cgroup memory limit, else 512 MiB.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from kbundle.errors import InvalidRequest, QueueFull
from kbundle.serving.limits import cgroup_memory_limit

BUDGET_ENV = "KBUNDLE_DECODE_BUDGET_BYTES"
WAIT_ENV = "KBUNDLE_DECODE_WAIT_MS"
DEFAULT_BUDGET = 512 * 1024 * 1024
DEFAULT_WAIT_MS = 1000.0
# Pillow's in-memory bytes per pixel: 1 for 1/L/P, 2 for 16-bit grey, 4 for everything else
# (RGB is stored as 32-bit pixels, I and F are 32-bit).
_ONE_BYTE = {"1", "L", "P"}


def pillow_pixel_bytes(mode: str) -> int:
    if mode in _ONE_BYTE:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def default_budget() -> int:
    if os.environ.get(BUDGET_ENV):
        return int(os.environ[BUDGET_ENV])
    limit = cgroup_memory_limit()
    return limit // 4 if limit else DEFAULT_BUDGET


class ByteBudget:
    """A counting semaphore in bytes (thread-safe: decodes run on executor threads)."""

    def __init__(self, capacity: int, wait_s: float):
        self.capacity = capacity
        self.wait_s = wait_s
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, where: str, nbytes: int) -> Iterator[None]:
        self._acquire(where, nbytes)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()

    def _acquire(self, where: str, nbytes: int) -> None:
        if nbytes > self.capacity:
            raise InvalidRequest(
                f"{where}: decoding needs {nbytes} bytes, over the decode budget of "
                f"{self.capacity} bytes (env {BUDGET_ENV}); send smaller images or fewer per request"
            )
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_use + nbytes > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueFull(
                        f"{where}: decode budget busy ({self.in_use} of {self.capacity} bytes in "
                        f"use, {nbytes} needed; env {BUDGET_ENV}); retry shortly"
                    )
                self._cond.wait(left)
            self.in_use += nbytes


_budget: ByteBudget | None = None
_lock = threading.Lock()


def shared_budget() -> ByteBudget:
    """The process's one budget, built from the environment on first use."""
    global _budget
    with _lock:
        if _budget is None:
            wait_ms = float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_MS)
            _budget = ByteBudget(default_budget(), wait_ms / 1000.0)
        return _budget
