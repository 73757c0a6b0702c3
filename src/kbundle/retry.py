"""THE retry helper of kbundle: exponential back-off with jitter, bounded by attempts and a total deadline.

Callers say which errors are worth another try (`retryable`); anything else propagates at once,
so a permanent failure (404, bad credentials, bad input) never waits. When the attempts or the
deadline run out, `RetryExhausted` is raised from the last error, carrying how many attempts were
made and why it stopped. A shared `Deadline` lets several transfers (or a per-attempt timeout)
draw on the same time budget::

    policy = RetryPolicy(attempts=5, first_delay_s=0.5, deadline_s=120)
    body = retry_call(lambda: fetch(url), policy, retryable=lambda e: isinstance(e, Timeout))
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
OnRetry = Callable[[int, BaseException, float], None]
"""Called before each sleep with (attempt number that failed, its error, delay in seconds)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to keep trying; `deadline_s=None` means attempts alone bound it."""

    attempts: int = 5
    """Most attempts in all (1 = no retry)."""
    first_delay_s: float = 1.0
    """Delay after the first failure; doubles after each further one."""
    max_delay_s: float = 30.0
    """Cap on one delay."""
    deadline_s: float | None = None
    """Total time budget from the first attempt; no attempt starts after it."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter] (spreads thundering herds)."""

    def delays(self) -> Iterator[float]:
        """The delay before attempt 2, 3, ... (attempts - 1 values)."""
        for n in range(self.attempts - 1):
            base = min(self.first_delay_s * 2**n, self.max_delay_s)
            yield base * random.uniform(1 - self.jitter, 1 + self.jitter)


class Deadline:
    """A point in monotonic time; `None` seconds means no deadline."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self.at = None if seconds is None else self.start + seconds

    def remaining(self) -> float | None:
        return None if self.at is None else max(self.at - self.clock(), 0.0)

    def allows(self, delay_s: float) -> bool:
        """True when an attempt started after sleeping `delay_s` would still be in time."""
        return self.at is None or self.clock() + delay_s < self.at

    def cap(self, timeout_s: float) -> float:
        """`timeout_s`, shortened so one attempt cannot run past the deadline (at least 0.1 s)."""
        left = self.remaining()
        return timeout_s if left is None else max(min(timeout_s, left), 0.1)

    def elapsed(self) -> float:
        return self.clock() - self.start


class RetryExhausted(Exception):
    """Every allowed attempt failed with a retryable error; `__cause__` is the last one."""

    def __init__(self, last: BaseException, attempts: int, elapsed_s: float, reason: str):
        super().__init__(
            f"gave up after {attempts} attempts in {elapsed_s:.1f} s ({reason}): {last}"
        )
        self.last, self.attempts, self.elapsed_s, self.reason = last, attempts, elapsed_s, reason


def _next_delay(
    delays: Iterator[float], deadline: Deadline, attempt: int, exc: BaseException
) -> float:
    """The next delay, or RetryExhausted when the attempts or the deadline are used up."""
    delay = next(delays, None)
    if delay is None:
        reason = "attempts used up"
    elif not deadline.allows(delay):
        reason = f"deadline of {deadline.at - deadline.start:.1f} s reached"
    else:
        return delay
    raise RetryExhausted(exc, attempt, deadline.elapsed(), reason) from exc


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    on_retry: OnRetry | None = None,
    deadline: Deadline | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn()`, retried on errors `retryable` accepts; others propagate unchanged."""
    deadline = deadline or Deadline(policy.deadline_s)
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            delay = _next_delay(delays, deadline, attempt, exc)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
        sleep(delay)


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    on_retry: OnRetry | None = None,
    deadline: Deadline | None = None,
) -> T:
    """The coroutine form of `retry_call`: awaits `fn()` and sleeps with asyncio."""
    deadline = deadline or Deadline(policy.deadline_s)
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            delay = _next_delay(delays, deadline, attempt, exc)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
        await asyncio.sleep(delay)
