"""kbundle.retry, the project's one retry helper: back-off, jitter, deadline, classification.

Time is a fake clock here (sleeps advance it), so the schedule is checked exactly and fast; the
storage-init tests exercise the same helper against real servers.
"""

from __future__ import annotations

import asyncio

import pytest

from kbundle.retry import Deadline, RetryExhausted, RetryPolicy, retry_async, retry_call


class FakeTime:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Flaky:
    """Fails with `error` `failures` times, then returns 'ok'."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def transient(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


def test_delays_double_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(attempts=7, first_delay_s=1.0, max_delay_s=10.0, jitter=0.2)
    delays = list(policy.delays())
    assert len(delays) == 6
    for got, base in zip(delays, [1, 2, 4, 8, 10, 10], strict=True):
        assert base * 0.8 <= got <= base * 1.2


def test_retries_transient_errors_until_success() -> None:
    t, fn = FakeTime(), Flaky(2, TimeoutError("slow"))
    seen = []
    policy = RetryPolicy(attempts=5, first_delay_s=0.5, jitter=0)
    result = retry_call(
        fn, policy, transient, lambda n, e, d: seen.append((n, str(e), d)),
        Deadline(None, t.clock), t.sleep,
    )  # fmt: skip
    assert result == "ok" and fn.calls == 3
    assert seen == [(1, "slow", 0.5), (2, "slow", 1.0)] and t.sleeps == [0.5, 1.0]


def test_permanent_error_propagates_at_once() -> None:
    t, fn = FakeTime(), Flaky(5, PermissionError("403"))
    with pytest.raises(PermissionError):
        retry_call(fn, RetryPolicy(attempts=5), transient, sleep=t.sleep)
    assert fn.calls == 1 and t.sleeps == []


def test_attempts_used_up() -> None:
    t, fn = FakeTime(), Flaky(9, TimeoutError("slow"))
    with pytest.raises(RetryExhausted, match="gave up after 3 attempts .*attempts used up") as info:
        retry_call(fn, RetryPolicy(attempts=3, first_delay_s=0.1), transient, sleep=t.sleep)
    assert info.value.attempts == 3 and isinstance(info.value.__cause__, TimeoutError)


def test_deadline_stops_before_a_sleep_that_would_pass_it() -> None:
    t, fn = FakeTime(), Flaky(99, TimeoutError("slow"))
    policy = RetryPolicy(attempts=99, first_delay_s=1.0, jitter=0, deadline_s=10.0)
    with pytest.raises(RetryExhausted, match=r"deadline of 10.0 s reached") as info:
        retry_call(fn, policy, transient, deadline=Deadline(10.0, t.clock), sleep=t.sleep)
    assert t.sleeps == [1, 2, 4]  # 1+2+4 = 7 s; another 8 s would pass the 10 s deadline
    assert info.value.attempts == 4 and t.now < 10.0


def test_deadline_caps_per_attempt_timeouts() -> None:
    t = FakeTime()
    deadline = Deadline(5.0, t.clock)
    assert deadline.cap(60.0) == 5.0
    t.now = 4.5
    assert deadline.cap(60.0) == 0.5 and deadline.cap(0.2) == 0.2
    t.now = 9.0
    assert deadline.cap(60.0) == 0.1 and not deadline.allows(0.0)
    assert Deadline(None).cap(60.0) == 60.0


def test_async_form_retries_the_same_way() -> None:
    fn = Flaky(2, TimeoutError("slow"))

    async def call() -> str:
        return fn()

    policy = RetryPolicy(attempts=3, first_delay_s=0.001)
    assert asyncio.run(retry_async(call, policy, transient)) == "ok" and fn.calls == 3
