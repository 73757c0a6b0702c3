"""Which buckets share the next padded batch: merge neighbouring buckets when the engine says so.

Grouping by bucket alone splits the queue into one small batch per bucket. Merging a shorter
bucket's requests into a longer bucket's batch saves an engine call but pads them further. Which
wins depends on the engine: on a GPU a call's fixed cost dominates and padding is nearly free
(merge), on a CPU compute is linear in positions and padding costs what it pads (keep apart).
So the batcher measures it: every engine call feeds `EngineCost`, a least-squares fit of
`seconds = fixed + per_position * padded positions` over recent calls, and `plan` splits the
queued buckets into the runs that cost the least engine time in all, then runs the run that
holds the oldest request (so no bucket waits behind the others).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Weight of the newest call against the older ones: the fit follows the machine's load within
# ~100 calls, yet one slow call (a GC pause, a noisy neighbour) moves it little.
DECAY = 0.99
MIN_CALLS = 8  # fewer calls, or all of one size: no fit, no merging


class EngineCost:
    """Engine seconds per call as `fixed + per_position * positions`, fitted online.

    Written by the engine worker thread(s), read by the event loop: the sums are one tuple,
    replaced whole, so a reader never sees half an update (a racing second writer may drop one
    observation, which a running fit can afford)."""

    def __init__(self, fixed: float | None = None, per_position: float = 0.0):
        """`fixed` given: a set cost (tests, or an operator who knows the engine), no fitting."""
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0, 0)  # weight, x, y, xx, xy, calls
        self._given = (fixed, per_position) if fixed is not None else None

    def observe(self, positions: int, seconds: float) -> None:
        w, sx, sy, sxx, sxy, n = self._sums
        d = DECAY
        x = float(positions)
        self._sums = (
            w * d + 1.0,
            sx * d + x,
            sy * d + seconds,
            sxx * d + x * x,
            sxy * d + x * seconds,
            n + 1,
        )

    def estimate(self) -> tuple[float, float] | None:
        """(fixed seconds per call, seconds per padded position), or None while unknown."""
        if self._given is not None:
            return self._given
        w, sx, sy, sxx, sxy, n = self._sums
        spread = w * sxx - sx * sx
        if n < MIN_CALLS or spread <= 1e-9 * max(w * sxx, 1e-300):
            return None
        per_position = max((w * sxy - sx * sy) / spread, 0.0)
        fixed = max((sy - per_position * sx) / w, 0.0)
        return fixed, per_position


def plan(
    rows: Sequence[int], buckets: Sequence[int], head: int, cost: tuple[float, float], cap: int
) -> tuple[int, int]:
    """The run of bucket indexes (first, last) to batch next, holding bucket index `head`.

    `rows[k]` is the queued rows in bucket `buckets[k]`. Each run is padded to its last bucket
    and costs `fixed` per call (a call per `cap` rows) plus `per_position` per padded position;
    the split of the buckets into runs with the least total is found by dynamic programming."""
    fixed, per_position = cost
    best = [0.0] + [math.inf] * len(buckets)
    start = [0] * (len(buckets) + 1)
    for end in range(1, len(buckets) + 1):
        total = 0
        for first in range(end - 1, -1, -1):
            total += rows[first]
            calls = math.ceil(total / cap)
            run = best[first] + calls * fixed + per_position * total * buckets[end - 1]
            if run < best[end]:
                best[end], start[end] = run, first
    end = len(buckets)
    while start[end] > head:
        end = start[end]
    return start[end], end - 1
