"""The serving loop's lag, exported as `kbundle_event_loop_lag_seconds`.

Everything a server process does for a request (read, refuse, decode, answer, time a deadline out)
waits for its event loop; a loop held by a long callback or a garbage collection delays all of it
at once. A timer due every `interval_s` records how late it ran: cheap (ten wake-ups a second) and
the one figure that tells a slow engine from a stalled process.
"""

from __future__ import annotations

import asyncio

from kbundle.serving import metrics

INTERVAL_S = 0.1


class LoopLagProbe:
    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = INTERVAL_S):
        self.loop, self.interval_s = loop, interval_s
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> LoopLagProbe:
        self._arm()
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        due = self.loop.time() + self.interval_s
        self._handle = self.loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        metrics.LOOP_LAG.observe(max(0.0, self.loop.time() - due))
        self._arm()
