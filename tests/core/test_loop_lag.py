"""The serving loop's lag probe (kbundle.serving.loop_lag): a real loop held by a real stall is
seen in `kbundle_event_loop_lag_seconds`, and a served predictor exports the metric."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from metrics_text import samples, total
from procs import start_predictor

from kbundle.serving import metrics
from kbundle.serving.loop_lag import LoopLagProbe


def _bucket(le: str) -> float:
    for sample in metrics.LOOP_LAG.collect()[0].samples:
        if sample.name.endswith("_bucket") and sample.labels["le"] == le:
            return sample.value
    raise AssertionError(f"no bucket le={le}")


def test_a_stalled_loop_is_recorded_as_late_and_a_free_one_is_not():
    async def run() -> None:
        probe = LoopLagProbe(asyncio.get_running_loop(), interval_s=0.01).start()
        await asyncio.sleep(0.1)  # free: every tick on time
        free_over = _count() - _bucket("0.02")
        time.sleep(0.12)  # the loop is held: the next tick runs over 100 ms late
        await asyncio.sleep(0.03)
        probe.stop()
        assert _count() - _bucket("0.05") >= free_over + 1  # a sample above 50 ms appeared
        assert _bucket("0.001") >= 5  # the free ticks, on time within a millisecond

    before = _count()
    asyncio.run(run())
    assert _count() > before + 5


def _count() -> float:
    return next(s.value for s in metrics.LOOP_LAG.collect()[0].samples if s.name.endswith("_count"))


def test_a_served_predictor_exports_its_loop_lag(digits_v1: Path, tmp_path):
    proc = start_predictor("digits", digits_v1, tmp_path / "predictor.log")
    try:
        name = "kbundle_event_loop_lag_seconds_count"
        first = total(proc.http_url, name)
        time.sleep(0.5)
        assert total(proc.http_url, name) >= first + 3  # ticks every 100 ms
        buckets = samples(proc.http_url, "kbundle_event_loop_lag_seconds_bucket")
        assert {labels["le"] for labels, _ in buckets} >= {"0.005", "0.05", "+Inf"}
    finally:
        proc.stop()
