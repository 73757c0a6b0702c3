"""One revision's running processes: fetch its models, start predictor (and transformer), wake on demand.

`activate` is the activator: a request for a revision that is stopped (scaled to zero, or not yet
started) starts it and waits, bounded, until every component is ready; concurrent requests share
that one start. `track` brackets each request so the autoscaler sees in-flight work and idleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from kbundle.errors import ModelUnavailable
from kbundle.local.autoscale import scale_down_delay
from kbundle.local.launch import Launch, predictor_launch, transformer_launch
from kbundle.local.manifest import ComponentSpec, InferenceServiceSpec, Variant
from kbundle.local.metrics import RequestStats
from kbundle.local.storage import StorageMap, cached_fetch
from kbundle.local.supervisor import ComponentProcess

GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass(frozen=True)
class RuntimeOptions:
    state_dir: Path  # this InferenceService's folder (logs/ under it)
    cache_dir: Path  # fetched models, shared
    storage_map: StorageMap
    default_scale_down_delay_s: float = 60.0
    activation_timeout_s: float = 120.0
    console: bool = True
    # `kbundle up --runtimes DIR`: ServingRuntimes that expand a short-form predictor.model.
    serving_runtimes: tuple = ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RevisionRuntime:
    def __init__(
        self, name: str, isvc: InferenceServiceSpec, variant: Variant, options: RuntimeOptions
    ):
        self.name = name
        self.isvc = isvc
        self.variant = variant
        self.options = options
        self.stats = RequestStats()
        self.inflight = 0
        self.last_activity = time.monotonic()
        components = [c for c in (variant.predictor, variant.transformer) if c is not None]
        # The revision stops as one unit, so only when every component allows zero.
        self.min_zero = all(c.min_replicas == 0 for c in components)
        self.routed = True  # set by the service: False while the revision gets 0% (rollback)
        self.scale_down_delay_s = max(
            scale_down_delay(c.annotation_map, isvc.annotations, options.default_scale_down_delay_s)
            for c in components
        )
        self.processes: list[ComponentProcess] = []
        self.launches: list[Launch] = []  # index-aligned with processes
        self.entry: Launch | None = None
        self.cold_starts = 0
        self._lock = asyncio.Lock()
        self._stopping = False
        self._channel: grpc.aio.Channel | None = None

    # -- set-up ---------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Fetch the models (off the event loop) and build the component commands; starts nothing."""
        pred = self.variant.predictor
        pred_mounts = await asyncio.to_thread(self._fetch, pred)
        predictor = predictor_launch(
            pred, self.isvc.name, self.name, pred_mounts, free_port(), free_port()
        )
        self.launches = [predictor]
        self.processes = [self._process("predictor", predictor)]
        self.entry = predictor
        if self.variant.transformer is not None:
            trans = self.variant.transformer
            mounts = await asyncio.to_thread(self._fetch, trans)
            transformer = transformer_launch(
                trans, self.isvc.name, self.name, mounts, predictor, free_port(), free_port()
            )
            self.launches.append(transformer)
            self.processes.append(self._process("transformer", transformer))
            self.entry = transformer

    def _fetch(self, component: ComponentSpec) -> dict[str, str]:
        mounts = {}
        for uri, mount in component.storage:
            local = cached_fetch(self.options.storage_map.resolve(uri), self.options.cache_dir)
            mounts[mount] = str(local)
        return mounts

    def _process(self, role: str, launch: Launch) -> ComponentProcess:
        label = f"{self.name}/{role}"
        return ComponentProcess(
            label,
            launch.argv,
            launch.env,
            self.options.state_dir / "logs" / f"{self.name}-{role}.log",
            f"http://127.0.0.1:{launch.http_port}/v2/models/{launch.model_name}/ready",
            self.options.console,
        )

    @property
    def scales_to_zero(self) -> bool:
        """minReplicas 0, or no traffic: Knative scales unrouted revisions to zero whatever their
        min-scale, which also covers one woken by a tagged request while at 0%."""
        return self.min_zero or not self.routed

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(p.running for p in self.processes)

    @property
    def ready(self) -> bool:
        return not self._stopping and bool(self.processes) and all(p.ready for p in self.processes)

    def start(self) -> None:
        self.last_activity = time.monotonic()
        for proc in self.processes:
            proc.start()

    async def wait_ready(self, timeout_s: float, fail_on_exit: bool = False) -> bool:
        deadline = time.monotonic() + timeout_s
        for proc in self.processes:
            if not await proc.wait_ready(max(0.0, deadline - time.monotonic()), fail_on_exit):
                return False
        self.last_activity = time.monotonic()  # idle time counts from ready, not from the start
        return True

    def failure(self) -> str:
        """Which component is not ready, and the end of its log."""
        for proc in self.processes:
            if not proc.ready:
                exit_note = f", exited with {proc.exit_code}" if proc.exit_code is not None else ""
                return (
                    f"{proc.label} not ready{exit_note}: {proc.log_tail()} (log: {proc.log_path})"
                )
        return "ready"

    async def activate(self) -> None:
        """Start when stopped and wait until ready (bounded); ModelUnavailable when it does not come up."""
        if self.ready:
            return
        async with self._lock:
            if not self.running:
                self.cold_starts += 1
                self.start()
        if not await self.wait_ready(self.options.activation_timeout_s):
            raise ModelUnavailable(
                f"revision {self.name} is not ready after {self.options.activation_timeout_s:.0f}s "
                f"(logs: {self.options.state_dir / 'logs'})"
            )

    async def scale_to_zero(self) -> None:
        async with self._lock:
            if self.inflight == 0:
                await self.stop()

    async def drain_and_stop(self, timeout_s: float) -> None:
        """Stop once the requests already routed here are answered (no new ones arrive: the
        caller has moved the traffic away), or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        # Synchronous up to the first await: from here on no request takes the ready fast path.
        self._stopping = True
        try:
            await asyncio.gather(*(p.stop() for p in reversed(self.processes)))
            if self._channel is not None:
                await self._channel.close()
                self._channel = None
        finally:
            self._stopping = False

    # -- per request ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self.inflight += 1
        self.last_activity = time.monotonic()
        try:
            yield
        finally:
            self.inflight -= 1
            self.last_activity = time.monotonic()

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.entry.http_port}"

    def grpc_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self.entry.grpc_port}", options=GRPC_OPTIONS
            )
        return self._channel

    def describe(self) -> dict:
        idle = "scaled-to-zero" if self.min_zero else "stopped"
        if self.ready:
            state = "ready"
        elif self.running:
            state = "starting"
        else:
            state = "stopping" if any(p.alive for p in self.processes) else idle
        return {
            "name": self.name,
            "state": state,
            "scales_to_zero": self.min_zero,
            "scale_down_delay_s": self.scale_down_delay_s,
            "cold_starts": self.cold_starts,
            "inflight": self.inflight,
            "components": [
                {
                    "label": p.label,
                    "pid": p.pid,
                    "ready": p.ready,
                    "restarts": p.restarts,
                    "last_exit": p.last_exit,
                    "log": str(p.log_path),
                    "ready_url": p.ready_url,
                    "http_port": launch.http_port,
                    "grpc_port": launch.grpc_port,
                    "argv": launch.argv[1:],
                }
                for p, launch in zip(self.processes, self.launches, strict=True)
            ],
        }
