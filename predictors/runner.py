"""Runs engine calls off the event loop: one call at a time per engine instance."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from kbundle.predictors.engine import Engine

T = TypeVar("T")


class EngineRunner:
    """A thread per instance; the event loop only awaits, so other requests keep flowing."""

    def __init__(self, engine: Engine, instances: int = 1):
        self.engine = engine
        self.instances = instances
        self._pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="engine")

    async def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.engine.run, inputs, output_names)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run `fn(*args)` on an instance thread (the batcher's whole batch job)."""
        return self._pool.submit(fn, *args)

    def run_sync(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        return self._pool.submit(self.engine.run, inputs, output_names).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.engine.close()
