"""Torch model -> model.onnx / model.pt2 (torch.export program or AOTInductor package).

Every artifact is checked against the eager model before it is kept: the ONNX file through
onnxruntime on CPU, the program and package by running them, on a batch size other than the
one traced (so a batch dim baked in as a constant is caught). A mismatch beyond the tolerance
raises ExportMismatch and leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kbundle.predictors.torch_engine import AOTI_SIGNATURE_KEY, SIGNATURE_FILE, TorchEngine
from kbundle.settings import ModelSettings
from kbundle.specs import DYNAMIC, TensorSpec

logger = logging.getLogger("kbundle.export")

TRACE_BATCH = 4
CHECK_BATCH = 3
MAX_BATCH = 4096


class ExportMismatch(RuntimeError):
    """An exported artifact's output differs from the eager model's beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    form: str
    max_abs_diff: float


def parse_tensor_arg(text: str) -> TensorSpec:
    """`name:DATATYPE:DIMS` -> TensorSpec. DIMS is `d0xd1...` (-1 = dynamic, e.g. `input:FP32:-1x64`)
    or comma-separated where a name is a dynamic dim shared by every input using it
    (`input_ids:INT64:b,s` and `attention_mask:INT64:b,s`)."""
    try:
        name, datatype, dims = text.split(":")
        parts = dims.split(",") if "," in dims else dims.lower().split("x")
        shape = tuple(DYNAMIC if p.strip().isidentifier() else int(p) for p in parts)
        names = [p.strip() if p.strip().isidentifier() else None for p in parts]
        spec = TensorSpec(name, datatype.upper(), shape).named(names)
        spec.dtype  # noqa: B018 - validates the datatype name
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"--input {text!r}: expected NAME:DATATYPE:DIMS like input:FP32:-1x64 or "
            "input_ids:INT64:b,s (named dims are shared between inputs)"
        ) from exc
    return spec


def example_inputs(
    specs: Sequence[TensorSpec], batch: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs for tracing and checking; dynamic dims become `batch` (dim 0) or 8."""
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in specs:
        shape = tuple(
            (batch if i == 0 else 8) if d == DYNAMIC else d for i, d in enumerate(spec.shape)
        )
        if spec.dtype.kind == "f":
            array = rng.uniform(0, 16, shape).astype(spec.dtype)
        else:
            array = rng.integers(0, 16, shape).astype(spec.dtype)
        tensors.append(torch.from_numpy(array))
    return tuple(tensors)


def dynamic_shapes(specs: Sequence[TensorSpec]) -> tuple[dict[int, object], ...]:
    """One Dim per dim name, shared by every input using it (leading -1s share `batch`); other
    -1 dims are Dim.AUTO, so torch works out which of them the model needs equal instead of
    failing with `Constraints violated` when two inputs' lengths must match."""
    dims: dict[str, torch.export.Dim] = {}

    def named(name: str) -> torch.export.Dim:
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1, max=MAX_BATCH)
        return dims[name]

    shapes = []
    for spec in specs:
        axes: dict[int, object] = {}
        for axis, dim in enumerate(spec.shape):
            if dim != DYNAMIC:
                continue
            name = spec.dim_name(axis) or ("batch" if axis == 0 else None)
            axes[axis] = named(name) if name else torch.export.Dim.AUTO
        shapes.append(axes)
    return tuple(shapes)


def export_program(
    model: torch.nn.Module, specs: Sequence[TensorSpec]
) -> torch.export.ExportedProgram:
    model.eval()
    return torch.export.export(
        model, example_inputs(specs, TRACE_BATCH), dynamic_shapes=dynamic_shapes(specs)
    )


def _eager(model: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.inference_mode():
        result = model(*args)
    result = [result] if isinstance(result, torch.Tensor) else list(result)
    return [r.detach().cpu().numpy() for r in result]


def compare(
    expected: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    names: Sequence[str],
    atol: float,
    rtol: float,
    what: str,
) -> float:
    """Max abs difference over all outputs; ExportMismatch naming the output when out of tolerance."""
    worst = 0.0
    for name, want, have in zip(names, expected, got, strict=True):
        if want.shape != have.shape:
            raise ExportMismatch(
                f"{what}: output '{name}' has shape {list(have.shape)}, torch gives {list(want.shape)}"
            )
        diff = (
            float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64))))
            if want.size
            else 0.0
        )
        if not np.allclose(have, want, atol=atol, rtol=rtol):
            raise ExportMismatch(
                f"{what}: output '{name}' differs from torch by up to {diff:g} (atol {atol}, rtol {rtol})"
            )
        worst = max(worst, diff)
    return worst


def signature_json(
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    ranges: dict | None = None,
    program: torch.export.ExportedProgram | None = None,
) -> str:
    outputs = [{"name": n} for n in output_names]
    if program is not None:  # output dtypes, shapes and dim names from the program, for AOTI
        from kbundle.predictors.torch_engine import program_signature

        named = {"inputs": [_with_dims(s) for s in specs], "outputs": outputs}
        outputs = [_with_dims(s) for s in program_signature(program, named)[0].outputs]
    data = {"inputs": [_with_dims(s) for s in specs], "outputs": outputs}
    if ranges:
        data["ranges"] = {k: [list(v[0]), list(v[1])] for k, v in ranges.items()}
    return json.dumps(data)


def _with_dims(spec: TensorSpec) -> dict:
    """Metadata form plus the dim names given to export (the engine keeps them for validation)."""
    return (
        {**spec.to_metadata(), "dims": list(spec.dim_names)}
        if spec.dim_names
        else spec.to_metadata()
    )


def check_pt2(
    path: Path,
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    atol: float,
    rtol: float,
    device: str = "cpu",
) -> float:
    """Load model.pt2 through the serving engine on `device` and compare with eager torch (CPU)."""
    engine = TorchEngine.load(path, ModelSettings(device=device, warmup=False))
    args = example_inputs(specs, CHECK_BATCH, seed=1)
    got = engine.run(
        {s.name: a.numpy() for s, a in zip(specs, args, strict=True)}, list(output_names)
    )
    reference = _on(model, "cpu")
    return compare(_eager(reference, args), got, output_names, atol, rtol, f"{path} ({device})")


def _on(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """`model` if it already lives on `device`, else a moved copy: the caller's model stays put."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == torch.device(device).type for t in tensors):
        return model
    import copy

    return copy.deepcopy(model).to(device)


def save_program(
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    path: Path,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ExportResult:
    program = export_program(model, specs)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.export.save(
        program, str(tmp), extra_files={SIGNATURE_FILE: signature_json(specs, output_names)}
    )
    return _keep(
        tmp,
        path,
        "torch.export program",
        lambda: check_pt2(tmp, model, specs, output_names, atol, rtol),
    )


def save_aoti(
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    path: Path,
    device: str = "cpu",
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """AOTInductor package (compiled for `device`), with the signature in its metadata, checked
    by running it on that device; the caller's model is not moved (a copy is, when needed)."""
    program = torch.export.export(
        _on(model, device).eval(),
        tuple(a.to(device) for a in example_inputs(specs, TRACE_BATCH)),
        dynamic_shapes=dynamic_shapes(specs),
    )
    from kbundle.predictors.torch_engine import program_signature

    _, ranges = program_signature(
        program,
        {
            "inputs": [_with_dims(s) for s in specs],
            "outputs": [{"name": n} for n in output_names],
        },
    )
    tmp = path.with_name(f".tmp-{path.name}")
    metadata = {AOTI_SIGNATURE_KEY: signature_json(specs, output_names, ranges, program)}
    torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": metadata}
    )
    return _keep(
        tmp,
        path,
        f"AOTInductor package ({device})",
        lambda: check_pt2(tmp, model, specs, output_names, atol, rtol, device),
    )


def save_onnx(
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    path: Path,
    opset: int = 18,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ExportResult:
    """torch.onnx.export (dynamo exporter, dynamic dims from torch.export.Dim), checked in ORT CPU."""
    model.eval()
    tmp = path.with_name(f".tmp-{path.name}")
    program = torch.onnx.export(
        model,
        example_inputs(specs, TRACE_BATCH),
        dynamo=True,
        dynamic_shapes=dynamic_shapes(specs),
        input_names=[s.name for s in specs],
        output_names=list(output_names),
        opset_version=opset,
        external_data=False,
    )
    program.save(str(tmp))
    return _keep(tmp, path, "ONNX", lambda: check_onnx(tmp, model, specs, output_names, atol, rtol))


def check_onnx(
    path: Path,
    model: torch.nn.Module,
    specs: Sequence[TensorSpec],
    output_names: Sequence[str],
    atol: float,
    rtol: float,
) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = example_inputs(specs, CHECK_BATCH, seed=1)
    got = session.run(
        list(output_names), {s.name: a.numpy() for s, a in zip(specs, args, strict=True)}
    )
    return compare(_eager(model, args), got, output_names, atol, rtol, f"{path} (onnxruntime CPU)")


def _keep(tmp: Path, path: Path, form: str, check) -> ExportResult:
    try:
        diff = check()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    logger.info("wrote %s (%s), max abs diff vs torch %g", path, form, diff)
    return ExportResult(path, form, diff)
