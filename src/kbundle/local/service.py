"""The local InferenceService: applies the file as the controller would, and routes requests.

`apply` is the reconcile step. Knative mode: a changed template is a new revision; the new
traffic split goes live only once every revision in it is ready (a revision that never gets
ready leaves traffic where it was, as Knative does); revisions left without traffic are stopped.
Standard mode: the main predictor and each `spec.canary[]` entry are fixed targets with their
percentages. `watch` re-applies the file whenever its content changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kbundle.errors import ConfigError, ModelNotFoundError, ModelUnavailable
from kbundle.local import revisions as rv
from kbundle.local.autoscale import scale_down_loop
from kbundle.local.manifest import (
    KNATIVE,
    InferenceServiceSpec,
    first_inference_service,
    parse_inference_service,
)
from kbundle.local.runtime import RevisionRuntime, RuntimeOptions

logger = logging.getLogger("kbundle.up")
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


@dataclass
class Target:
    runtime: RevisionRuntime
    percent: int
    tag: str  # "latest", "prev", or a Standard-mode target name


class LocalService:
    def __init__(
        self,
        manifest: Path,
        options: RuntimeOptions,
        progress_deadline_s: float = 120.0,
        drain_timeout_s: float = 30.0,
    ):
        self.manifest = Path(manifest)
        self.options = options
        self.progress_deadline_s = progress_deadline_s
        self.drain_timeout_s = drain_timeout_s
        self.spec: InferenceServiceSpec | None = None
        self.state: rv.RolloutState | None = None
        self.runtimes: dict[str, RevisionRuntime] = {}
        self.targets: list[Target] = []
        self.last_error: str | None = None
        self._file_digest = ""
        self.scrape_ingress: str | None = None  # host:port: keep a Prometheus file_sd file
        self._apply_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    # -- reconcile ------------------------------------------------------------------------------
    async def apply(self) -> bool:
        """Read the file and make it live; False (traffic unchanged) when it cannot be."""
        async with self._apply_lock:
            raw = self.manifest.read_bytes()
            self._file_digest = hashlib.sha256(raw).hexdigest()
            try:
                doc = _with_runtime(first_inference_service(raw, self.manifest), self.options)
                spec = parse_inference_service(doc, source=str(self.manifest))
                for warning in spec.warnings:
                    logger.warning("%s: %s", self.manifest, warning)
                if self.spec is not None and spec.name != self.spec.name:
                    raise ConfigError(
                        f"metadata.name changed from {self.spec.name!r} to {spec.name!r}; restart kbundle up"
                    )
                targets = await (
                    self._knative(spec, doc) if spec.mode == KNATIVE else self._standard(spec)
                )
            except (ConfigError, ModelUnavailable) as exc:
                self.last_error = str(exc)
                logger.error("not applied: %s", exc)
                await self._stop_unrouted()  # a revision that failed to come up is not left running
                return False
            self.spec, self.targets, self.last_error = spec, targets, None
            for t in targets:
                t.runtime.routed = t.percent > 0
            if spec.mode == KNATIVE:
                rv.record_ready_traffic(self.state, {t.runtime.name: t.percent for t in targets})
                rv.prune(self.state)
                rv.save_state(self.options.state_dir, self.state)
            logger.info("traffic: %s", ", ".join(f"{t.runtime.name}={t.percent}%" for t in targets))
            await self._stop_unrouted()
            if self.scrape_ingress:
                from kbundle.local import scrape

                scrape.write_targets(self, self.scrape_ingress)
            return True

    async def _knative(self, spec: InferenceServiceSpec, doc: dict) -> list[Target]:
        if self.state is None:
            self.state = rv.load_state(self.options.state_dir, spec.name)
        created = rv.add_revision_if_changed(self.state, spec.template_hash, doc)
        if created:
            logger.info("new revision %s", self.state.latest)
        traffic = rv.traffic_for(self.state, spec.canary_percent)
        targets = []
        for name, percent in traffic.items():
            runtime = await self._runtime(name, self.state.revision(name).manifest)
            tag = "latest" if name == self.state.latest else "prev"
            targets.append(Target(runtime, percent, tag))
        await self._bring_up([t for t in targets if t.percent > 0])
        rv.save_state(self.options.state_dir, self.state)
        return targets

    async def _standard(self, spec: InferenceServiceSpec) -> list[Target]:
        canary_total = sum(p for _, _, p in spec.standard_canaries)
        wanted = [(f"{spec.name}-predictor", spec.variant, 100 - canary_total, "main")]
        wanted += [(f"{spec.name}-{n}", v, p, n) for n, v, p in spec.standard_canaries]
        targets = []
        for name, variant, percent, tag in wanted:
            key = (
                f"{name}@{hash(variant) & 0xFFFFFFFF:08x}"  # a changed variant is a new process set
            )
            runtime = self.runtimes.get(key)
            if runtime is None:
                runtime = RevisionRuntime(name, spec, variant, self.options)
                await runtime.prepare()
                self.runtimes[key] = runtime
            targets.append(Target(runtime, percent, tag))
        await self._bring_up([t for t in targets if t.percent > 0])
        return targets

    async def _runtime(self, name: str, manifest: dict) -> RevisionRuntime:
        if name not in self.runtimes:
            spec = parse_inference_service(manifest, source=f"revision {name}")
            runtime = RevisionRuntime(name, spec, spec.variant, self.options)
            await runtime.prepare()
            self.runtimes[name] = runtime
        return self.runtimes[name]

    async def _bring_up(self, targets: list[Target]) -> None:
        """Start what is stopped and wait until all are ready (the new split waits for that)."""
        for t in targets:
            t.runtime.routed = True  # about to get traffic: not the autoscaler's to stop meanwhile
            if not t.runtime.running:
                t.runtime.start()
        for t in targets:
            if not await t.runtime.wait_ready(self.progress_deadline_s, fail_on_exit=True):
                raise ModelUnavailable(
                    f"revision {t.runtime.name} did not become ready; traffic stays as it was. "
                    f"{t.runtime.failure()}"
                )

    async def _stop_unrouted(self) -> None:
        routed = {id(t.runtime) for t in self.targets if t.percent > 0}
        for key, runtime in list(self.runtimes.items()):
            if id(runtime) not in routed and runtime.running:
                logger.info(
                    "%s has no traffic: stopping it once its in-flight requests finish",
                    runtime.name,
                )
                await runtime.drain_and_stop(self.drain_timeout_s)
            if id(runtime) not in {id(t.runtime) for t in self.targets}:
                self.runtimes.pop(key)

    # -- serve ----------------------------------------------------------------------------------
    def pick(self, tag: str | None = None) -> RevisionRuntime:
        """A revision for one request: the one tagged `tag` (latest, prev, or a Standard-mode
        target name; even at 0%, as Knative's tag routes are), else by the traffic percentages."""
        if tag:
            for t in self.targets:
                if t.tag == tag or t.runtime.name == tag:
                    return t.runtime
            known = ", ".join(
                sorted({t.tag for t in self.targets} | {t.runtime.name for t in self.targets})
            )
            raise ModelNotFoundError(f"no revision tagged {tag!r} (known: {known})")
        live = [t for t in self.targets if t.percent > 0]
        if not live:
            raise ModelUnavailable(f"{self.manifest}: no revision receives traffic")
        roll = random.uniform(0, sum(t.percent for t in live))
        for t in live:
            roll -= t.percent
            if roll < 0:
                return t.runtime
        return live[-1].runtime

    def tag_from_host(self, host: str) -> str | None:
        """`latest-<isvc>…` / `prev-<isvc>…` hosts, when the InferenceService enables tag routing
        (annotation serving.kserve.io/enable-tag-routing: "true", as KServe requires)."""
        if self.spec is None or self.spec.annotations.get(TAG_ROUTING) != "true":
            return None
        for tag in ("latest", "prev"):
            if host.startswith(f"{tag}-{self.spec.name}"):
                return tag
        return None

    def start_background(self, watch_interval_s: float) -> None:
        self._tasks.append(
            asyncio.create_task(scale_down_loop(lambda: [t.runtime for t in self.targets]))
        )
        if watch_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._watch(watch_interval_s)))

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(OSError):
                digest = hashlib.sha256(self.manifest.read_bytes()).hexdigest()
                if digest != self._file_digest:
                    logger.info("%s changed: applying", self.manifest)
                    await self.apply()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(r.stop() for r in self.runtimes.values()))

    def kill_now(self) -> None:
        """SIGKILL every child at once (the second Ctrl-C): no orphan outlives `kbundle up`."""
        for runtime in self.runtimes.values():
            for proc in runtime.processes:
                proc.kill_now()

    # -- status ---------------------------------------------------------------------------------
    async def status(self, window_s: float | None = None) -> dict:
        spec = self.spec
        out = {
            "isvc": spec.name if spec else None,
            "mode": spec.mode if spec else None,
            "manifest": str(self.manifest),
            "canary_percent": spec.canary_percent if spec else None,
            "last_error": self.last_error,
            "time": time.time(),
            "window_s": window_s,
            "revisions": [],
        }
        if self.state is not None:
            out.update(
                latest=self.state.latest,
                latest_rolled_out=self.state.latest_rolled_out,
                previous_rolled_out=self.state.previous_rolled_out,
            )
        async with httpx.AsyncClient(timeout=2.0) as client:
            for t in self.targets:
                info = t.runtime.describe()
                info.update(
                    traffic=t.percent, tag=t.tag, totals=t.runtime.stats.summary().as_dict()
                )
                if window_s:
                    info["window"] = t.runtime.stats.summary(window_s).as_dict()
                for comp, proc in zip(info["components"], t.runtime.processes, strict=True):
                    comp["predict_count"] = (
                        await _predict_count(client, proc.ready_url) if proc.ready else None
                    )
                out["revisions"].append(info)
        return out


async def _predict_count(client: httpx.AsyncClient, ready_url: str) -> int | None:
    """Requests the component itself counted on its /metrics: a `*request*` counter (errors
    excluded), else kserve's request_predict_seconds histogram; None when it exposes neither."""
    base = ready_url.split("/v2/", 1)[0]
    try:
        text = (await client.get(base + "/metrics")).text
    except httpx.HTTPError:
        return None
    families = list(text_string_to_metric_families(text))
    for family in families:
        if family.type == "counter" and "request" in family.name and "error" not in family.name:
            return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    for family in families:
        if family.name == "request_predict_seconds":
            return int(sum(s.value for s in family.samples if s.name.endswith("_count")))
    return None


def _with_runtime(doc: dict, options: RuntimeOptions) -> dict:
    """A short-form predictor expanded with its ServingRuntime (`kbundle up --runtimes DIR`)."""
    if not options.serving_runtimes:
        return doc
    from kbundle.manifests.runtimes import RuntimeResolutionError, with_runtime

    try:
        return with_runtime(doc, list(options.serving_runtimes))
    except RuntimeResolutionError as exc:
        raise ConfigError(str(exc)) from exc
