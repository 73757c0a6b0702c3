"""Scale-to-zero emulation: stop idle revisions whose minReplicas is 0 (Knative's min-scale 0).

A revision with no request in flight and none for longer than its scale-down delay is stopped.
The delay comes from the annotation `autoscaling.knative.dev/scale-down-delay` (component first,
then the InferenceService's, since KServe copies those onto the Knative revision), else from
`kbundle up --scale-down-delay`. The activator side (a request waking a stopped revision) is
`RevisionRuntime.activate`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from kbundle.errors import ConfigError

logger = logging.getLogger("kbundle.up")
SCALE_DOWN_DELAY = "autoscaling.knative.dev/scale-down-delay"
_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$"
)


class Scalable(Protocol):
    name: str
    scale_down_delay_s: float
    inflight: int
    last_activity: float

    @property
    def running(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def scales_to_zero(self) -> bool: ...

    async def scale_to_zero(self) -> None: ...


def parse_duration(text: str) -> float:
    """Knative/Go durations: '30s', '1m30s', '2m', '500ms', '1h'; a bare number is seconds."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groups()):
        raise ConfigError(f"{SCALE_DOWN_DELAY}: {text!r} is not a duration like 30s, 2m or 1m30s")
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def scale_down_delay(
    component_annotations: dict[str, str], isvc_annotations: dict[str, str], default_s: float
) -> float:
    for source in (component_annotations, isvc_annotations):
        if SCALE_DOWN_DELAY in source:
            return parse_duration(source[SCALE_DOWN_DELAY])
    return default_s


def idle_for(rev: Scalable, now: float | None = None) -> float:
    return (now or time.monotonic()) - rev.last_activity


async def scale_down_loop(
    revisions: Callable[[], Iterable[Scalable]], interval_s: float = 0.25
) -> None:
    """Runs until cancelled; each pass stops every revision that is idle past its delay."""
    while True:
        for rev in list(revisions()):
            if (
                rev.scales_to_zero
                and rev.ready  # never in the middle of its own start
                and rev.running
                and rev.inflight == 0
                and idle_for(rev) > rev.scale_down_delay_s
            ):
                logger.info(
                    "%s idle for %.1fs (scale-down delay %.1fs): scaling to zero",
                    rev.name,
                    idle_for(rev),
                    rev.scale_down_delay_s,
                )
                await rev.scale_to_zero()
        await asyncio.sleep(interval_s)
