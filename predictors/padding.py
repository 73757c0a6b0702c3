"""Padding-aware batching: requests of different lengths share a batch, padded to a bucket.

Opt-in per model in kbundle.yaml:

    padding:
      dim: s                     # the padded dim: a dim name of the engine, or an axis number
      buckets: [16, 32, 64, 128]
      pad_values: {input_ids: 0, attention_mask: 0}
      mask: attention_mask       # optional; pads with 0 so the model ignores padded positions
      merge: true                # default; neighbouring buckets share a batch when the engine's
                                 # measured cost says one call is cheaper (padding_plan.py)

The batcher asks this class for each request's batch key (its bucket instead of its length),
for the padded inputs of a batch, and for each request's outputs cut back to its own length.
It never touches the queue. A config that cannot be right is refused when the model loads.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter

from kbundle.errors import EngineLoadError
from kbundle.predictors.engine import Engine
from kbundle.predictors.padding_plan import EngineCost, plan
from kbundle.specs import DYNAMIC, Signature

POSITIONS = Counter(
    "kbundle_padding_positions",
    "Positions of the padded dim sent to the engine by padded batches: real or padding "
    "(padding overhead = padding / real).",
    ["model", "kind"],
)
KEYS = {"dim", "buckets", "pad_values", "mask", "merge"}


@dataclass(frozen=True)
class Padding:
    """One model's padding plan: where to pad, to what, and which outputs to cut back."""

    model_name: str
    inputs: Mapping[str, int]  # padded input -> axis
    outputs: Mapping[str, int]  # per-position output -> axis to cut back
    buckets: tuple[int, ...]
    pad_values: Mapping[str, object]
    mask: str | None
    merge: bool = True
    cost: EngineCost = field(default_factory=EngineCost, compare=False)

    # -- what the batcher calls -------------------------------------------------------------
    def length(self, inputs: Mapping[str, np.ndarray]) -> int:
        return max(inputs[name].shape[axis] for name, axis in self.inputs.items())

    def bucket(self, length: int) -> int | None:
        """The smallest bucket that holds `length`; None when over the largest (runs alone)."""
        index = bisect.bisect_left(self.buckets, length)
        return self.buckets[index] if index < len(self.buckets) else None

    def batch_key(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> tuple:
        """Like the plain key, with the padded dims replaced by the bucket (oversize: unique)."""
        bucket = self.bucket(self.length(inputs)) or object()
        dims = tuple(
            (name, a.dtype.str, self._masked(name, a.shape[1:]))
            for name, a in sorted(inputs.items())
        )
        return (dims, tuple(output_names), bucket)

    def joins(
        self, head: tuple, queued: Iterable[tuple[tuple, int]], cap: int
    ) -> Callable[[tuple], bool]:
        """Which batch keys may share `head`'s batch: its own bucket, plus the neighbouring
        buckets `plan` merges with it (`queued`: every queued request's key and rows, head's too).
        Without a cost estimate yet, or with merge off, only head's own key."""
        estimate = self.cost.estimate() if self.merge else None
        if estimate is None or not isinstance(head[2], int):
            return head.__eq__
        family = head[:2]
        rows = [0] * len(self.buckets)
        for key, n in queued:
            if key[:2] == family and isinstance(key[2], int):
                rows[self.buckets.index(key[2])] += n
        first, last = plan(rows, self.buckets, self.buckets.index(head[2]), estimate, cap)
        allowed = frozenset(self.buckets[first : last + 1])
        return lambda key: key[:2] == family and key[2] in allowed

    def observe(self, batch: Sequence[Mapping[str, np.ndarray]], rows: int, seconds: float) -> None:
        """Feed the engine-cost fit with one call (each request's inputs): its padded positions
        (a lone request runs unpadded, at its own length) and its seconds."""
        longest = max(self.length(inputs) for inputs in batch)
        target = longest if len(batch) == 1 else (self.bucket(longest) or longest)
        self.cost.observe(rows * target, seconds)

    def _masked(self, name: str, dims: tuple[int, ...]) -> tuple[int, ...]:
        axis = self.inputs.get(name)
        return dims if axis is None else dims[: axis - 1] + (-1,) + dims[axis:]

    def pad(self, inputs: Mapping[str, np.ndarray], target: int) -> dict[str, np.ndarray]:
        """One request's inputs padded along the padded dim up to `target` positions."""
        out = dict(inputs)
        for name, axis in self.inputs.items():
            array = inputs[name]
            missing = target - array.shape[axis]
            if missing > 0:
                widths = [(0, 0)] * array.ndim
                widths[axis] = (0, missing)
                out[name] = np.pad(array, widths, constant_values=self.pad_values[name])
        return out

    def cut(self, name: str, output: np.ndarray, length: int) -> np.ndarray:
        """A per-position output cut back to the request's own length; others unchanged."""
        axis = self.outputs.get(name)
        if axis is None or output.ndim <= axis or output.shape[axis] == length:
            return output
        return output[(slice(None),) * axis + (slice(0, length),)]

    def count(self, lengths: Sequence[int], target: int) -> None:
        real = sum(lengths)
        POSITIONS.labels(model=self.model_name, kind="real").inc(real)
        POSITIONS.labels(model=self.model_name, kind="padding").inc(target * len(lengths) - real)

    # -- building it at load time (refuses configs that cannot be right) ----------------------
    @classmethod
    def build(cls, model_name: str, config: Mapping | None, engine: Engine) -> Padding | None:
        if not config:
            return None
        where = f"model '{model_name}' kbundle.yaml padding"
        unknown = sorted(set(config) - KEYS)
        if unknown:
            raise EngineLoadError(f"{where}: unknown key(s) {unknown} (known: {sorted(KEYS)})")
        signature = engine.signature
        inputs = _padded_inputs(where, config.get("dim"), signature)
        buckets = _buckets(where, config.get("buckets"), inputs, engine)
        pad_values = _pad_values(where, config.get("pad_values"), inputs, signature)
        mask = _mask(where, config.get("mask"), inputs, pad_values)
        outputs = _per_position_outputs(config["dim"], inputs, signature)
        merge = config.get("merge", True)
        if not isinstance(merge, bool):
            raise EngineLoadError(f"{where}: 'merge' must be true or false, got {merge!r}")
        return cls(model_name, inputs, outputs, buckets, pad_values, mask, merge)


def _padded_inputs(where: str, dim: object, signature: Signature) -> dict[str, int]:
    if isinstance(dim, bool) or not isinstance(dim, (str, int)):
        raise EngineLoadError(f"{where}: 'dim' must name a dynamic dim (e.g. s) or give its axis")
    places = {}
    for spec in signature.inputs:
        for axis, size in enumerate(spec.shape):
            hit = spec.dim_name(axis) == dim if isinstance(dim, str) else axis == dim
            if hit and axis > 0 and size == DYNAMIC:
                places[spec.name] = axis
    if not places:
        dims = {s.name: list(s.dim_names or s.shape) for s in signature.inputs}
        raise EngineLoadError(
            f"{where}: dim {dim!r} is not a dynamic non-batch dim of any input (inputs: {dims})"
        )
    return places


def _buckets(where: str, value: object, inputs: Mapping[str, int], engine: Engine) -> tuple:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in value)
        or sorted(set(value)) != value
    ):
        raise EngineLoadError(
            f"{where}: 'buckets' must be increasing positive integers, got {value!r}"
        )
    for name, axis in inputs.items():
        high = engine.shape_ranges.get(name, ((), ()))[1]
        if axis < len(high) and value[-1] > high[axis]:
            raise EngineLoadError(
                f"{where}: bucket {value[-1]} is over the {engine.kind} engine's max {high[axis]} "
                f"for input '{name}' dim {axis}"
            )
    return tuple(value)


def _pad_values(
    where: str, value: object, inputs: Mapping[str, int], signature: Signature
) -> dict[str, object]:
    given = value if isinstance(value, dict) else {}
    if value is not None and not isinstance(value, dict):
        raise EngineLoadError(f"{where}: 'pad_values' must map input names to values")
    unknown = sorted(set(given) - set(signature.input_names))
    if unknown:
        raise EngineLoadError(
            f"{where}: pad_values names unknown input(s) {unknown} (inputs: {list(signature.input_names)})"
        )
    missing = sorted(set(inputs) - set(given))
    if missing:
        raise EngineLoadError(f"{where}: pad_values has no value for padded input(s) {missing}")
    for name, pad in given.items():
        dtype = signature.input(name).dtype
        if not np.can_cast(np.min_scalar_type(pad), dtype, "same_kind") or isinstance(pad, str):
            raise EngineLoadError(f"{where}: pad value {pad!r} for '{name}' is not a {dtype} value")
    return {name: given[name] for name in inputs}


def _mask(where: str, mask: object, inputs: Mapping[str, int], pads: Mapping) -> str | None:
    if mask is None:
        return None
    if mask not in inputs:
        raise EngineLoadError(
            f"{where}: mask {mask!r} is not one of the padded inputs {sorted(inputs)}"
        )
    if pads[mask] != 0:
        raise EngineLoadError(f"{where}: the mask '{mask}' must pad with 0, not {pads[mask]!r}")
    return str(mask)


def _per_position_outputs(dim: object, inputs: Mapping, signature: Signature) -> dict[str, int]:
    """Outputs carrying the padded dim: by name where the engine names dims, else by axis."""
    out = {}
    for spec in signature.outputs:
        for axis, size in enumerate(spec.shape):
            named = isinstance(dim, str) and spec.dim_name(axis) == dim
            by_axis = isinstance(dim, int) and axis == dim and not spec.dim_names
            if (named or by_axis) and axis > 0 and size == DYNAMIC:
                out[spec.name] = axis
                break
    return out
