"""TransformerModel: a kserve.Model (and an ArrayModel) that pre-processes, calls the predictor
over the hop, and post-processes.

It is an ArrayModel with `validator = None`: our V2 REST and gRPC routes hand it the decoded
arrays, and it checks them against its own spec (the features name every bad field).
kserve's hooks are overridden with array-based ones: `preprocess` (client arrays -> predictor
tensors), `predict` (the hop) and `postprocess` (predictor outputs -> client outputs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from kserve import Model

from kbundle.errors import ConfigError, InvalidRequest
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.specs import Signature
from kbundle.transformers.hop import Hop, HopConfig, make_hop
from kbundle.transformers.pipeline import Pipeline
from kbundle.validation import SignatureValidator

logger = logging.getLogger("kbundle.transformer")


class TransformerModel(Model):
    def __init__(self, name: str, model_dir: str | Path, hop_config: HopConfig):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.hop_config = hop_config
        self.pipeline: Pipeline | None = None
        self.hop: Hop | None = None
        self.load_error: str | None = None

    def load(self) -> bool:
        if self.ready:
            return True
        try:
            self.pipeline = Pipeline.load(self.model_dir)
        except ConfigError as exc:
            self.load_error = str(exc)
            logger.error("transformer '%s' not ready: %s", self.name, exc)
            return False
        if not self.hop_config.model_name:
            target = self.pipeline.predictor_model or self.name
            self.hop_config = replace(self.hop_config, model_name=target)
        self.hop = make_hop(self.hop_config)
        logger.info(
            "transformer '%s': %s -> %s over %s",
            self.name,
            [s.name for s in self.signature.inputs],
            self.hop_config.where,
            self.hop_config.protocol,
        )
        self.ready = True
        return True

    def stop(self) -> None:
        self.ready = False

    # -- what the routes read ----------------------------------------------------------------
    @property
    def validator(self) -> SignatureValidator | None:
        return None  # free-form inputs: the features validate them

    @property
    def signature(self) -> Signature:
        return self.pipeline.signature

    def get_input_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.inputs]

    def get_output_types(self) -> list[dict]:
        return [spec.to_metadata() for spec in self.signature.outputs]

    # -- the three steps ---------------------------------------------------------------------
    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse:
        wanted = self._requested(request.requested_outputs)
        sent = await self.preprocess(request)
        outputs = await self.predict(sent, request.headers, request.id, request.deadline)
        result = await self.postprocess(outputs, sent)
        return ArrayResponse(
            outputs={name: result[name] for name in wanted}, model_version=self.hop.model_version
        )

    async def preprocess(
        self, payload: ArrayRequest, headers: Mapping[str, str] | None = None
    ) -> dict[str, np.ndarray]:
        if not isinstance(payload, ArrayRequest):
            raise InvalidRequest(
                f"transformer '{self.name}' serves the V2 protocol only (POST /v2/models/{self.name}/infer)"
            )
        if self.pipeline.blocking:
            # Image decode and tokenisation are CPU work: keep the event loop free for other requests.
            return await asyncio.get_running_loop().run_in_executor(
                None, self.pipeline.preprocess, payload.inputs
            )
        return self.pipeline.preprocess(payload.inputs)

    async def predict(
        self,
        payload: Mapping[str, np.ndarray],
        headers: Mapping[str, str] | None = None,
        request_id: str = "",
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The hop; `deadline` (time.monotonic(), the client's) bounds it and travels with it."""
        names = self.pipeline.predictor_outputs()
        return await self.hop.infer(request_id, payload, names, headers or {}, deadline)

    async def postprocess(
        self, result: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        return self.pipeline.postprocess(result, sent or {})

    def _requested(self, requested: list[str] | None) -> list[str]:
        names = list(self.signature.output_names)
        for name in requested or ():
            if name not in names:
                raise InvalidRequest(
                    f"model '{self.name}': unknown output '{name}' (the outputs are {names})"
                )
        return requested or names
