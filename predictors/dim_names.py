"""Dim names for engines whose own file keeps none (a TensorRT plan), from the ONNX it was built
from when that file sits beside it (`kbundle build` and start-up builds keep model.onnx there).

TensorRT reports dynamic dims as -1 without names, and equal profile ranges do not mean two
dims must agree (a query and a document may both allow 1..512), so names are never guessed
from profiles: only the ONNX `dim_param`s the plan was built from are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kbundle.specs import Signature, TensorSpec

Names = Mapping[str, tuple[str | None, ...]]


def onnx_dim_names(path: Path) -> dict[str, tuple[str | None, ...]]:
    """{tensor name: dim_param per dim (None where numeric)} for the graph's inputs and outputs."""
    if not path.is_file():
        return {}
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: tuple(d.dim_param or None for d in value.type.tensor_type.shape.dim)
        for value in [*graph.input, *graph.output]
    }


def with_dim_names(signature: Signature, names: Names) -> Signature:
    """The signature with `names` on every tensor whose rank matches (others unchanged)."""

    def named(spec: TensorSpec) -> TensorSpec:
        given = names.get(spec.name)
        return spec.named(given) if given and len(given) == len(spec.shape) else spec

    return Signature.of(map(named, signature.inputs), map(named, signature.outputs))
