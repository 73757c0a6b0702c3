"""`kbundle export --model pkg.mod:factory --out DIR [--format onnx,program|aoti]`: torch -> served files.

Each file is checked against the eager model before it is written (ONNX through onnxruntime
CPU); a mismatch exits non-zero and leaves no file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="MODULE:CALLABLE returning a torch.nn.Module (e.g. kbundle.samples_torch:digits_model)",
    )
    parser.add_argument(
        "--out", required=True, help="model dir to write model.onnx / model.pt2 into"
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        help="NAME:DATATYPE:DIMS, -1 = dynamic (e.g. input:FP32:-1x64); default: the module's INPUTS",
    )
    parser.add_argument(
        "--output",
        action="append",
        default=[],
        help="output names in forward() order; default: the module's OUTPUTS",
    )
    parser.add_argument(
        "--format",
        default="onnx,program",
        help="comma list of onnx, program (torch.export) or aoti (AOTInductor); program and aoti both write model.pt2",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device an AOTInductor package is compiled for",
    )
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="absolute tolerance of the numeric check"
    )


FORMATS = ("onnx", "program", "aoti")


def run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or ("program" in formats and "aoti" in formats):
        print(
            f"error: --format takes onnx plus one of program/aoti, got {args.format!r}",
            file=sys.stderr,
        )
        return 2
    from kbundle.predictors import torch_export  # imports torch: only once the arguments are sound

    module_name, _, attr = args.model.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
        specs = [torch_export.parse_tensor_arg(t) for t in args.input] or list(module.INPUTS)
        outputs = args.output or list(module.OUTPUTS)
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = factory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".kbundle-export-", dir=out))
    try:
        written = _write_all(torch_export, model, specs, outputs, formats, stage, args)
        if written is None:
            return 1
        for result in written:  # every format passed: only now do files appear in --out
            os.replace(result.path, out / result.path.name)
            print(
                f"{out / result.path.name}: {result.form}, max abs diff vs torch {result.max_abs_diff:.3g}"
            )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return 0


def _write_all(torch_export, model, specs, outputs, formats, stage: Path, args) -> list | None:
    """Each format into `stage`; None (after one error line) when any export or check fails."""
    writers = {
        "onnx": lambda: torch_export.save_onnx(
            model, specs, outputs, stage / "model.onnx", atol=args.atol
        ),
        "program": lambda: torch_export.save_program(
            model, specs, outputs, stage / "model.pt2", atol=args.atol
        ),
        "aoti": lambda: torch_export.save_aoti(
            model, specs, outputs, stage / "model.pt2", device=args.device, atol=args.atol
        ),
    }
    results = []
    for name in formats:
        try:
            results.append(writers[name]())
        except torch_export.ExportMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        except Exception as exc:  # torch's export errors: one line, the hint, no traceback
            print(f"error: {name} export failed: {_first_line(exc)}{HINT}", file=sys.stderr)
            return None
    return results


HINT = (
    " (if inputs share a dynamic dim, name it in each --input, e.g. "
    "--input input_ids:INT64:b,s --input attention_mask:INT64:b,s)"
)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
