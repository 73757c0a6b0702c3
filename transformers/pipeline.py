"""The spec's features and output steps, run over one request: client arrays -> predictor arrays
(pre-processing) and predictor outputs -> client outputs (post-processing)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kbundle.errors import ConfigError, EngineError, InvalidRequest
from kbundle.specs import Signature
from kbundle.transformers.features import Feature, OutputStep
from kbundle.transformers.spec import INPUT_KINDS, OUTPUT_KINDS, SPEC_FILE, build_steps, read_spec


@dataclass
class Pipeline:
    features: list[Feature]
    outputs: list[OutputStep]
    predictor_model: str | None  # the model name at the predictor, when it differs from ours

    @classmethod
    def load(cls, model_dir: str | Path) -> Pipeline:
        model_dir = Path(model_dir)
        data = read_spec(model_dir)
        predictor = data.get("predictor") or {}
        if not isinstance(predictor, dict) or set(predictor) - {"model_name"}:
            raise ConfigError(f"{SPEC_FILE}: 'predictor' may only set 'model_name'")
        pipeline = cls(
            features=build_steps(data, "inputs", INPUT_KINDS, model_dir),
            outputs=build_steps(data, "outputs", OUTPUT_KINDS, model_dir),
            predictor_model=predictor.get("model_name"),
        )
        pipeline.signature  # noqa: B018 - fail at load on duplicate client names
        return pipeline

    @cached_property
    def signature(self) -> Signature:
        """What clients send and get back (V2 metadata); names must be unique."""
        inputs = [spec for f in self.features for spec in f.client_inputs()]
        outputs = [spec for step in self.outputs for spec in step.client_outputs()]
        for kind, specs in (("input", inputs), ("output", outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ConfigError(f"{SPEC_FILE}: client {kind} names repeat: {names}")
        return Signature.of(inputs, outputs)

    @property
    def blocking(self) -> bool:
        return any(f.blocking for f in self.features)

    def predictor_outputs(self) -> list[str]:
        return list(
            dict.fromkeys(name for step in self.outputs for name in step.predictor_outputs())
        )

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Client arrays -> predictor tensors; every client input must belong to a feature."""
        stray = [name for name in inputs if not any(f.consumes(name) for f in self.features)]
        if stray:
            accepted = [s.name for s in self.signature.inputs]
            raise InvalidRequest(f"unknown input '{stray[0]}' (this transformer takes {accepted})")
        empty = next(
            (name for name, array in inputs.items() if array.ndim and not len(array)), None
        )
        if empty is not None:
            raise InvalidRequest(f"input '{empty}': no rows (the batch dimension is 0)")
        tensors: dict[str, np.ndarray] = {}
        for feature in self.features:
            tensors.update(feature.encode(inputs))
        rows = {name: t.shape[0] for name, t in tensors.items() if t.ndim}
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"'{n}' has {r}" for n, r in rows.items())
            raise InvalidRequest(f"inputs disagree on the number of rows ({detail})")
        return tensors

    def postprocess(
        self, outputs: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        missing = [name for name in self.predictor_outputs() if name not in outputs]
        if missing:
            raise EngineError(
                f"the predictor's answer lacks output '{missing[0]}' (got {sorted(outputs)})"
            )
        result: dict[str, np.ndarray] = {}
        for step in self.outputs:
            result.update(step.decode(outputs, sent))
        return result
