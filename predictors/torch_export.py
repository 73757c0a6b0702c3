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
    """`name:DATATYPE:d0xd1...` (e.g. `input:FP32:-1x64`) -> TensorSpec."""
    try:
        name, datatype, dims = text.split(":")
        shape = tuple(int(d) for d in dims.lower().split("x"))
        spec = TensorSpec(name, datatype.upper(), shape)
        spec.dtype  # noqa: B018 - validates the datatype name
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"--input {text!r}: expected NAME:DATATYPE:DIMS like input:FP32:-1x64"
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


def dynamic_shapes(specs: Sequence[TensorSpec]) -> tuple[dict[int, torch.export.Dim], ...]:
    """One shared `batch` Dim for every leading -1, a Dim per other -1 dim."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    shapes = []
    for spec in specs:
        dims = {}
        for axis, dim in enumerate(spec.shape):
            if dim == DYNAMIC:
                dims[axis] = (
                    batch
                    if axis == 0
                    else torch.export.Dim(f"{spec.name}_{axis}", min=1, max=MAX_BATCH)
                )
        shapes.append(dims)
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
    if program is not None:  # output dtypes/shapes from the program, for AOTI packages
        from kbundle.predictors.torch_engine import _output_specs

        outputs = [s.to_metadata() for s in _output_specs(program, {"outputs": outputs})]
    data = {"inputs": [s.to_metadata() for s in specs], "outputs": outputs}
    if ranges:
        data["ranges"] = {k: [list(v[0]), list(v[1])] for k, v in ranges.items()}
    return json.dumps(data)


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
            "inputs": [s.to_metadata() for s in specs],
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
