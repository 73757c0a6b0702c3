"""EnginePredictor: a kserve.Model that serves one engine over V2 REST and gRPC."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from kserve import Model

from kbundle import cpu_budget
from kbundle.errors import EngineError, EngineLoadError, InvalidRequest, KBundleError
from kbundle.predictors.admission import Admission, queue_policy
from kbundle.predictors.batcher import DynamicBatcher
from kbundle.predictors.engine import Engine, load_engine, warmup_inputs
from kbundle.predictors.faults import engine_fault
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.padding import Padding
from kbundle.predictors.runner import EngineRunner
from kbundle.predictors.unbatched import UnbatchedQueue
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.serving.core import OnCancel
from kbundle.settings import ModelSettings
from kbundle.specs import Signature
from kbundle.validation import SignatureValidator

logger = logging.getLogger("kbundle.predictor")


class EnginePredictor(Model):
    """Loads the engine, warms it up, and only then reports ready (honest readiness)."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        settings: ModelSettings,
        engine_cpus: int | None = None,
    ):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings = settings
        # CPUs the engine and the event loop share (None: the CPU budget); the `--workers`
        # engine owner's is the budget less the front ends.
        self.engine_cpus = engine_cpus
        # Not `self.engine`: kserve.Model uses that name as a flag (truthy -> start_engine()).
        self.loaded_engine: Engine | None = None
        self.runner: EngineRunner | None = None
        self.batcher: DynamicBatcher | None = None
        self.unbatched: UnbatchedQueue | None = None  # the queue when not batching
        self.load_error: str | None = None
        self._validator: SignatureValidator | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> bool:
        if self.ready:
            return True
        try:
            engine = load_engine(self.model_dir, self.settings)
            self._attach(engine)
            if self.settings.warmup:
                self._warm_up()
        except (EngineLoadError, KBundleError) as exc:
            self.load_error = str(exc)
            logger.error("model '%s' not ready: %s", self.name, exc)
            self.ready = False
            return False
        self.ready = True
        return True

    def _attach(self, engine: Engine) -> None:
        self.loaded_engine = engine
        self.runner = EngineRunner(engine, self.settings.instances)
        self._validator = SignatureValidator(self.name, engine.signature)
        max_batch = batch_cap(self.name, self.settings.max_batch_size, engine)
        if max_batch > 0 and engine.signature.batchable:
            self.batcher = DynamicBatcher(
                self.runner,
                self.name,
                max_batch,
                self.settings.max_batch_delay_ms,
                BatchMetrics(self.name),
                Padding.build(self.name, self.settings.padding, engine),
                Admission(self.name, queue_policy(self.settings, max_batch)),
                engine_on_loop_ms(self.settings, engine, self.engine_cpus) / 1000.0,
            )
        elif self.settings.padding:
            raise EngineLoadError(
                f"model '{self.name}': padding needs the batcher (max_batch_size > 0 and a "
                "dynamic batch dim on every input and output)"
            )
        else:
            self.unbatched = self._unbatched_queue(engine)
        logger.info(
            "model '%s': dynamic batching %s",
            self.name,
            f"on (max_batch_size {max_batch}, max_batch_delay_ms "
            f"{self.settings.max_batch_delay_ms}, instances {self.settings.instances}, "
            f"engine_on_loop_ms {self.batcher.on_loop.limit_s * 1000:g})"
            if self.batcher
            else "off",
        )

    def _unbatched_queue(self, engine: Engine) -> UnbatchedQueue:
        """The same queue bounds and deadlines without a batcher; rows are limited only when
        the leading dim is a batch dim and max_request_rows is set explicitly."""
        batchable = engine.signature.batchable
        policy = queue_policy(self.settings, 0)
        if not batchable:
            policy = replace(policy, max_request_rows=0)
        admission = Admission(self.name, policy)
        return UnbatchedQueue(self.runner, admission, BatchMetrics(self.name), batchable)

    def refuse_if_full(self, ahead: int = 0) -> None:
        """QueueFull now if this model's queue is full, or would be with `ahead` more requests
        (the request core asks before decoding)."""
        queue = self.batcher or self.unbatched
        if queue is not None:  # None: no engine loaded, and the core refuses the call anyway
            queue.refuse_if_full(ahead)

    def _warm_up(self) -> None:
        inputs = warmup_inputs(self.signature, ranges=self.loaded_engine.shape_ranges)
        names = self.signature.output_names
        try:
            outputs = self.runner.run_sync(inputs, names)
        except Exception as exc:
            raise EngineLoadError(f"warm-up inference failed: {exc}") from exc
        logger.info(
            "model '%s' warm-up passed: %s",
            self.name,
            {n: o.shape for n, o in zip(names, outputs, strict=True)},
        )

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.ready = False

    # -- what the routes read ----------------------------------------------------------------
    @property
    def signature(self) -> Signature:
        if self.loaded_engine is None:
            raise EngineError(f"model '{self.name}' has no engine loaded")
        return self.loaded_engine.signature

    @property
    def validator(self) -> SignatureValidator | None:
        return self._validator

    @property
    def platform(self) -> str:
        """Triton's platform name of the engine (V2 model metadata, both transports)."""
        from kbundle.predictors.model_config import PLATFORMS

        if self.loaded_engine is None:
            return ""
        return PLATFORMS.get(self.loaded_engine.kind, ("", ""))[0]

    def get_input_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.inputs]

    def get_output_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.outputs]

    # -- inference ---------------------------------------------------------------------------
    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse:
        if self.batcher is not None:
            names, outputs = self.enqueue_arrays(request)
            return self.response_of(names, await outputs)
        names = request.requested_outputs or self.signature.output_names
        self.loaded_engine.check_shapes(self.name, request.inputs)
        try:
            outputs = await self.unbatched.infer(request.inputs, names, request.deadline)
        except KBundleError:
            raise
        except Exception as exc:
            raise engine_fault(self.name, exc, request.inputs, request.id) from exc
        return self.response_of(names, outputs)

    def enqueue_arrays(self, request: ArrayRequest) -> tuple[Sequence[str], asyncio.Future]:
        """The batched `infer_arrays` without a coroutine (loop thread): the output names and
        the future of their arrays. Refusals and bad shapes raise here, before the queue."""
        names = request.requested_outputs or self.signature.output_names
        self.loaded_engine.check_shapes(self.name, request.inputs)  # per request, before batching
        # The batcher turns engine faults into per-request EngineErrors itself.
        future = self.batcher.enqueue(
            request.inputs, names, request.id, request.deadline, request.nothing_behind
        )
        return names, future

    def infer_arrays_blocking(
        self, request: ArrayRequest, loop: asyncio.AbstractEventLoop, on_done: OnCancel
    ) -> ArrayResponse:
        """`infer_arrays` for a transport thread (the gRPC server's): blocks that thread, not the
        loop, and skips a coroutine and task per request. `on_done(cancel)` registers the
        cancel to run when the caller goes away (grpc's `context.add_callback`)."""
        names = request.requested_outputs or self.signature.output_names
        self.loaded_engine.check_shapes(self.name, request.inputs)
        if self.batcher is not None:
            future = self.batcher.submit(loop, request.inputs, names, request.id, request.deadline)
            wait = future.result
        else:
            job, future = self.unbatched.submit(request.inputs, names, request.deadline)
            wait = partial(self.unbatched.wait, job, future)
        on_done(future.cancel)
        try:
            outputs = wait()
        except (KBundleError, concurrent.futures.CancelledError):
            raise
        except Exception as exc:
            raise engine_fault(self.name, exc, request.inputs, request.id) from exc
        return self.response_of(names, outputs)

    def response_of(self, names: Sequence[str], outputs: list) -> ArrayResponse:
        return ArrayResponse(
            outputs=dict(zip(names, outputs, strict=True)),
            model_version=self.settings.model_version,
        )

    async def predict(
        self,
        payload: object,
        headers: dict | None = None,
        response_headers: dict | None = None,
    ) -> None:
        """kserve's own entry (its V1 route; its V2 routes are served by kbundle's request core)."""
        raise InvalidRequest(
            f"model '{self.name}' serves the V2 protocol only (POST /v2/models/{self.name}/infer)"
        )


def batch_cap(name: str, max_batch_size: int, engine: Engine) -> int:
    """max_batch_size, lowered to what one engine call accepts (a TensorRT profile's max), so a
    full batch is never refused by the engine and rerun request by request."""
    top = engine.max_batch_rows()
    if top is None or max_batch_size <= top:
        return max_batch_size
    logger.warning(
        "model '%s': max_batch_size %d capped to %d, the %s engine's largest batch",
        name,
        max_batch_size,
        top,
        engine.kind,
    )
    return top


# Derived engine_on_loop_ms: a batch this short costs less than the hand-off to the engine thread
# and back (bench/results/engine_on_loop.md: tiny, one core, c=32, REST 4,895 vs 3,833 infer/s).
# Longer batches stay on the thread so the loop keeps reading sockets meanwhile: at 2 ms the
# overload refusal p99 doubled against the thread (bench/results/overload_on_loop_2ms.md).
ENGINE_ON_LOOP_MS = 0.5


def engine_on_loop_ms(settings: ModelSettings, engine: Engine, cpus: int | None = None) -> float:
    """The engine_on_loop_ms setting, or where it is derived (-1): ENGINE_ON_LOOP_MS for an
    engine on the CPU when the engine and the event loop have one CPU between them (`cpus`,
    default the CPU budget: the loop and engine threads could not run at once anyway), else 0.
    A GPU engine's thread waits on the device while the loop works."""
    if settings.engine_on_loop_ms >= 0:
        return settings.engine_on_loop_ms
    cpus = cpus if cpus is not None else cpu_budget.cpu_budget().threads
    if engine.device.startswith("cpu") and cpus == 1:
        return ENGINE_ON_LOOP_MS
    return 0.0
