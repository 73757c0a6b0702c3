"""Transfer progress: a live line with rate and ETA on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("kbundle.storage_init")
MIB = 1024 * 1024


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """Counts bytes of one transfer; `total` may be None when the size is unknown."""

    def __init__(self, label: str, total: int | None, interval_s: float, tty: bool | None = None):
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = 0.2 if self.tty else interval_s
        self.start = self.last = time.monotonic()

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now, end="")

    def reset(self, done: int) -> None:
        """After a retry that restarts (or resumes) the transfer at `done` bytes."""
        self.done = done

    def finish(self) -> None:
        self._emit(time.monotonic(), end="\n", final=True)

    def _emit(self, now: float, end: str, final: bool = False) -> None:
        line = self._line(now, final)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100)[:100] + end)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    def _line(self, now: float, final: bool) -> str:
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label}: {human(self.done)}"
        if self.total:
            text += f" of {human(self.total)} ({100 * self.done / self.total:.0f}%)"
        text += f" at {human(rate)}/s"
        if final:
            return text + f" in {elapsed:.1f} s"
        if self.total and rate > 0:
            text += f", ETA {max(self.total - self.done, 0) / rate:.0f} s"
        return text
