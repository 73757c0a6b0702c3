"""Which buckets share the next padded batch: merge neighbouring buckets when the engine says so.

Grouping by bucket alone splits the queue into one small batch per bucket. Merging a shorter
bucket's requests into a longer bucket's batch saves an engine call but pads them further. Which
wins depends on the engine: on a GPU a call costs about the same up to many rows and padding is
nearly free (merge); on a CPU compute grows almost linearly with positions and padding costs
what it pads (keep apart). So the batcher measures it: every engine call feeds `EngineCost`, a
fit of `seconds = scale * positions ** exponent` over recent calls (exponent near 0: a call's
cost hardly grows with its size; near 1: linear, no gain from bigger calls). `plan` splits the
queued buckets into the runs that cost the least engine time in all, then runs the run that
holds the oldest request (so no bucket waits behind the others).

A power law, not `fixed + per_position * positions`: per position, batched calls are cheaper
than small ones (ONNX Runtime on 2 cores: 0.064 ms at 1 x 128, 0.045 ms at 32 x 128), so a
straight line fitted to big calls claims a fixed cost of ~3 ms per call that small calls do not
pay, and merges far too much. In logs the fit follows the curve at both ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Weight of the newest call against the older ones: the fit follows the machine's load within
# ~100 calls, yet one slow call (a GC pause, a noisy neighbour) moves it little.
DECAY = 0.99
MIN_CALLS = 8  # fewer calls, or all of one size: no fit, no merging


class EngineCost:
    """Engine seconds per call as `scale * positions ** exponent`, fitted online in logs.

    Written by the engine worker thread(s), read by the event loop: the sums are one tuple,
    replaced whole, so a reader never sees half an update (a racing second writer may drop one
    observation, which a running fit can afford)."""

    def __init__(self, scale: float | None = None, exponent: float = 1.0):
        """`scale` given: a set cost (tests, or an operator who knows the engine), no fitting."""
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0, 0)  # weight, x, y, xx, xy, calls (x, y: logs)
        self._given = (scale, exponent) if scale is not None else None

    def observe(self, positions: int, seconds: float) -> None:
        if positions <= 0 or seconds <= 0:
            return
        w, sx, sy, sxx, sxy, n = self._sums
        d = DECAY
        x, y = math.log(positions), math.log(seconds)
        self._sums = (w * d + 1, sx * d + x, sy * d + y, sxx * d + x * x, sxy * d + x * y, n + 1)

    def estimate(self) -> tuple[float, float] | None:
        """(scale, exponent), or None while unknown. The exponent is kept in [0, 1]: a call
        never costs less than a smaller one, and over 1 (never seen) merging could not pay."""
        if self._given is not None:
            return self._given
        w, sx, sy, sxx, sxy, n = self._sums
        spread = w * sxx - sx * sx
        if n < MIN_CALLS or spread <= 1e-6 * w * w:
            return None
        exponent = min(max((w * sxy - sx * sy) / spread, 0.0), 1.0)
        return math.exp((sy - exponent * sx) / w), exponent


def plan(
    rows: Sequence[int], buckets: Sequence[int], head: int, cost: tuple[float, float], cap: int
) -> tuple[int, int]:
    """The run of bucket indexes (first, last) to batch next, holding bucket index `head`.

    `rows[k]` is the queued rows in bucket `buckets[k]`. Each run is padded to its last bucket
    and split into calls of at most `cap` rows, each costing `scale * positions ** exponent`;
    the split of the buckets into runs with the least total is found by dynamic programming."""
    scale, exponent = cost
    best = [0.0] + [math.inf] * len(buckets)
    start = [0] * (len(buckets) + 1)
    for end in range(1, len(buckets) + 1):
        total = 0
        for first in range(end - 1, -1, -1):
            total += rows[first]
            calls = math.ceil(total / cap)
            each = total * buckets[end - 1] / calls if calls else 0.0
            run = best[first] + calls * scale * each**exponent
            if run < best[end]:
                best[end], start[end] = run, first
    end = len(buckets)
    while start[end] > head:
        end = start[end]
    return start[end], end - 1
