"""EnginePredictor: a kserve.Model that serves one engine over V2 REST and gRPC."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kbundle.predictors.batcher import DynamicBatcher
from kbundle.predictors.engine import Engine, load_engine, warmup_inputs
from kbundle.predictors.metrics import BatchMetrics
from kbundle.predictors.runner import EngineRunner
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from kbundle.errors import EngineError, EngineLoadError, InvalidRequest, KbundleError
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.settings import ModelSettings
from kbundle.specs import Signature, v2_datatype
from kbundle.validation import SignatureValidator

logger = logging.getLogger("kbundle.predictor")


class EnginePredictor(Model):
    """Loads the engine, warms it up, and only then reports ready (honest readiness)."""

    def __init__(self, name: str, model_dir: str | Path, settings: ModelSettings):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings = settings
        # Not `self.engine`: kserve.Model uses that name as a flag (truthy -> start_engine()).
        self.loaded_engine: Engine | None = None
        self.runner: EngineRunner | None = None
        self.batcher: DynamicBatcher | None = None
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
        except (EngineLoadError, KbundleError) as exc:
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
            )
        logger.info(
            "model '%s': dynamic batching %s",
            self.name,
            f"on (max_batch_size {max_batch}, max_batch_delay_ms "
            f"{self.settings.max_batch_delay_ms}, instances {self.settings.instances})"
            if self.batcher
            else "off",
        )

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

    def get_input_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.inputs]

    def get_output_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.outputs]

    # -- inference ---------------------------------------------------------------------------
    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse:
        names = request.requested_outputs or self.signature.output_names
        self.loaded_engine.check_shapes(self.name, request.inputs)  # per request, before batching
        if self.batcher is not None:
            # The batcher turns engine faults into per-request EngineErrors itself.
            return self._response(names, await self.batcher.infer(request.inputs, names))
        try:
            outputs = await self.runner.run(request.inputs, names)
        except KbundleError:
            raise
        except Exception as exc:
            raise self._engine_failure(exc) from exc
        return self._response(names, outputs)

    def infer_arrays_blocking(
        self,
        request: ArrayRequest,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Callable[[], object]], object],
    ) -> ArrayResponse:
        """`infer_arrays` for a transport thread (the gRPC server's): blocks that thread, not the
        loop, and skips a coroutine and task per request. `on_done(cancel)` registers the
        cancel to run when the caller goes away (grpc's `context.add_callback`)."""
        names = request.requested_outputs or self.signature.output_names
        self.loaded_engine.check_shapes(self.name, request.inputs)
        if self.batcher is not None:
            future = self.batcher.submit(loop, request.inputs, names)
        else:
            future = self.runner.submit(self.loaded_engine.run, request.inputs, names)
        on_done(future.cancel)
        try:
            outputs = future.result()
        except (KbundleError, concurrent.futures.CancelledError):
            raise
        except Exception as exc:
            raise self._engine_failure(exc) from exc
        return self._response(names, outputs)

    def _response(self, names, outputs) -> ArrayResponse:
        return ArrayResponse(
            outputs=dict(zip(names, outputs, strict=True)),
            model_version=self.settings.model_version,
        )

    def _engine_failure(self, exc: Exception) -> EngineError:
        """Validated input that the engine still rejects: the engine's message, as a 500."""
        logger.exception("model '%s' engine failure", self.name)
        return EngineError(f"model '{self.name}': engine failed: {exc}")

    async def predict(
        self,
        payload: InferRequest,
        headers: dict | None = None,
        response_headers: dict | None = None,
    ) -> InferResponse:
        """kserve's own entry (V2 via DataPlane): same validation and engine path as our routes."""
        if not isinstance(payload, InferRequest):
            raise InvalidRequest(f"model '{self.name}' serves the V2 protocol only")
        arrays = {}
        for tensor in payload.inputs:
            self.validator.check_input(tensor.name, tensor.datatype, tensor.shape)
            arrays[tensor.name] = np.asarray(tensor.as_numpy())
        self.validator.check_complete(arrays)
        self.validator.check_batch(arrays)
        requested = [o.name for o in payload.request_outputs] if payload.request_outputs else None
        if requested:
            self.validator.check_outputs(requested)
        result = await self.infer_arrays(
            ArrayRequest(id=payload.id or "", inputs=arrays, requested_outputs=requested)
        )
        outputs = []
        for name, array in result.outputs.items():
            out = InferOutput(name=name, shape=list(array.shape), datatype=v2_datatype(array.dtype))
            out.set_data_from_numpy(array, binary_data=payload.use_binary_outputs)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            model_version=self.settings.model_version or None,
            use_binary_outputs=payload.use_binary_outputs,
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
