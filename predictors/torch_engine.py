"""PyTorch engine (`model.pt2`): a torch.export program or an AOTInductor package.

Both forms are the same file name; the archive's contents say which. The signature comes from
the program itself (placeholder dtypes and shapes, symbolic dims as -1, Dim ranges kept for
validation), with the tensor names `kbundle export` stores beside it. Runs on CUDA when there
is one (device: auto) under torch.inference_mode, optionally in FP16/BF16 and, on CUDA, with a
captured CUDA graph per batch bucket.
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kbundle.errors import EngineLoadError
from kbundle.predictors.engine import Engine, ShapeRange
from kbundle.settings import ModelSettings, effective_precision
from kbundle.specs import DYNAMIC, Signature, TensorSpec, v2_datatype

logger = logging.getLogger("kbundle.engine.torch")

# Written by `kbundle export`: {"inputs": [spec...], "outputs": [spec...]} (TensorSpec metadata form).
SIGNATURE_FILE = "kbundle-signature.json"
AOTI_SIGNATURE_KEY = "kbundle.signature"
PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MAX_DIM = 1 << 31  # stands in for torch's "no upper bound"


def torch_to_v2(dtype: torch.dtype) -> str:
    return v2_datatype(torch.empty((), dtype=dtype).numpy().dtype)


def is_aoti_package(path: Path) -> bool:
    """AOTInductor packages carry compiled code under data/aotinductor/; export programs do not."""
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in f"/{name}" for name in archive.namelist())


def pick_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if requested == "cuda":
        raise EngineLoadError(
            f"device: cuda asked for, but torch {torch.__version__} sees no CUDA GPU "
            f"(CUDA build: {torch.version.cuda or 'none, a CPU-only wheel'})"
        )
    return torch.device("cpu")


def program_signature(
    program: torch.export.ExportedProgram, names: dict | None
) -> tuple[Signature, dict[str, ShapeRange]]:
    """Inputs from the user placeholders' fake tensors; -1 and a (min, max) range per symbolic
    dim, named by its symbol (inputs sharing a symbol must agree) or by `kbundle export`'s name."""
    user_inputs = program.graph_signature.user_inputs
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs, ranges = [], {}
    for name in user_inputs:
        value = nodes[name].meta["val"]
        shape, low, high, dims = [], [], [], []
        for dim in value.shape:
            if isinstance(dim, int):
                shape.append(dim)
                low.append(dim)
                high.append(dim)
                dims.append(None)
            else:
                bounds = program.range_constraints.get(dim.node.expr)
                shape.append(DYNAMIC)
                low.append(int(bounds.lower) if bounds is not None else 0)
                high.append(_upper_bound(bounds.upper if bounds is not None else None))
                dims.append(_symbol(dim))
        inputs.append(TensorSpec(name, torch_to_v2(value.dtype), tuple(shape)).named(dims))
        if DYNAMIC in shape:
            ranges[name] = (tuple(low), tuple(high))
    outputs = _output_specs(program, names)
    if names:  # exported names win (the graph's placeholder names can be mangled)
        inputs, outputs = _exported_names(inputs, outputs, names["inputs"])
        ranges = {names["inputs"][user_inputs.index(k)]["name"]: v for k, v in ranges.items()}
    return Signature.of(inputs, outputs), ranges


def _upper_bound(upper: Any) -> int:
    """A Dim's max as an int; MAX_DIM for no bound (sympy oo, or torch's int_oo from Dim.AUTO,
    which claims to be finite and then fails int())."""
    try:
        return int(upper) if upper is not None and upper.is_finite else MAX_DIM
    except (TypeError, ValueError, OverflowError, AttributeError):
        return MAX_DIM


def _symbol(dim: Any) -> str | None:
    """A symbolic dim's name (inputs and outputs sharing it must agree); None for expressions."""
    return None if isinstance(dim, int) or not dim.node.expr.is_Symbol else str(dim.node.expr)


def _exported_names(
    inputs: list[TensorSpec], outputs: list[TensorSpec], stored: list[dict]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Tensor names from `kbundle export`, and its dim names in place of the symbols they label
    (on the outputs too, so padding knows which outputs carry the padded dim)."""
    rename: dict[str, str] = {}
    for spec, item in zip(inputs, stored, strict=True):
        for symbol, given in zip(spec.dim_names, item.get("dims") or (), strict=False):
            if symbol and given:
                rename[symbol] = given

    def renamed(spec: TensorSpec, name: str) -> TensorSpec:
        dims = [rename.get(d, d) if d else None for d in spec.dim_names]
        return TensorSpec(name, spec.datatype, spec.shape).named(dims)

    named_inputs = [renamed(s, item["name"]) for s, item in zip(inputs, stored, strict=True)]
    return named_inputs, [renamed(s, s.name) for s in outputs]


def _output_specs(program: torch.export.ExportedProgram, names: dict | None) -> list[TensorSpec]:
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [arg.meta["val"] for arg in output_node.args[0]][
        -len(program.graph_signature.user_outputs) :
    ]
    specs = []
    for i, value in enumerate(values):
        shape = tuple(d if isinstance(d, int) else DYNAMIC for d in value.shape)
        name = names["outputs"][i]["name"] if names else f"output_{i}"
        spec = TensorSpec(name, torch_to_v2(value.dtype), shape)
        specs.append(spec.named([_symbol(d) for d in value.shape]))
    return specs


def stored_signature(data: dict) -> tuple[Signature, dict[str, ShapeRange]]:
    """The signature `kbundle export` embedded in an AOTInductor package's metadata."""

    def spec(item: dict) -> TensorSpec:
        shape = tuple(item["shape"])
        return TensorSpec(item["name"], item["datatype"], shape).named(item.get("dims") or ())

    signature = Signature.of((spec(i) for i in data["inputs"]), (spec(o) for o in data["outputs"]))
    ranges = {name: (tuple(r[0]), tuple(r[1])) for name, r in data.get("ranges", {}).items()}
    return signature, ranges


class _GraphBucket:
    """One captured CUDA graph for a fixed batch size, with its static input/output tensors."""

    def __init__(self, module: Any, inputs: list[torch.Tensor]):
        self.inputs = inputs
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the capture, as CUDA graphs require
            for _ in range(2):
                module(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = _flatten(module(*self.inputs))

    def run(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = args[0].shape[0]
        for static, arg in zip(self.inputs, args, strict=True):
            static[:rows].copy_(arg, non_blocking=True)
        self.graph.replay()
        return [out[:rows] for out in self.outputs]


def _flatten(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return list(result.values())
    return list(result)


class TorchEngine(Engine):
    kind = "torch"
    model_file = "model.pt2"

    def __init__(
        self,
        module: Any,
        signature: Signature,
        ranges: dict[str, ShapeRange],
        device: torch.device,
        dtype: torch.dtype | None,
        form: str,
    ):
        self.module = module
        self.signature = signature
        self.shape_ranges = ranges
        self.torch_device = device
        self.compute_dtype = dtype  # None: run in the program's own dtypes
        self.device = f"{device} ({form}, torch {torch.__version__}{', ' + str(dtype).removeprefix('torch.') if dtype else ''})"
        self._graphs: dict[int, _GraphBucket] = {}
        self._graph_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, settings: ModelSettings) -> TorchEngine:
        device = pick_device(settings.device)
        if settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        precision = effective_precision(settings)
        if precision == "int8":
            raise EngineLoadError(
                "precision int8 is a TensorRT build option; the torch engine runs fp32, fp16 or bf16"
            )
        dtype = PRECISION_DTYPES.get(precision)
        try:
            if is_aoti_package(path):
                engine = cls._load_aoti(path, device, dtype)
            else:
                engine = cls._load_program(path, device, dtype)
        except (zipfile.BadZipFile, RuntimeError, ValueError, KeyError) as exc:
            raise EngineLoadError(
                f"torch cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        if settings.cuda_graphs:
            try:
                engine.capture_graphs(settings.batch_buckets)
            except EngineLoadError:
                raise
            except Exception as exc:  # a sync op in the model, OOM, ...: one line, not a traceback
                engine._graphs.clear()
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise EngineLoadError(
                    f"CUDA graph capture for {path} failed: {type(exc).__name__}: {first} "
                    "(set cuda_graphs: false to run it eagerly)"
                ) from exc
        return engine

    @classmethod
    def _load_program(
        cls, path: Path, device: torch.device, dtype: torch.dtype | None
    ) -> TorchEngine:
        extra = {SIGNATURE_FILE: ""}
        program = torch.export.load(str(path), extra_files=extra)
        names = json.loads(extra[SIGNATURE_FILE]) if extra[SIGNATURE_FILE] else None
        signature, ranges = program_signature(program, names)
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
        if dtype is not None:
            module = module.to(dtype)
        return cls(module, signature, ranges, device, dtype, "torch.export program")

    @classmethod
    def _load_aoti(cls, path: Path, device: torch.device, dtype: torch.dtype | None) -> TorchEngine:
        if dtype is not None:
            logger.warning(
                "precision %s ignored: an AOTInductor package runs in the dtypes it was compiled for",
                dtype,
            )
        module = torch._inductor.aoti_load_package(str(path))
        metadata = module.get_metadata()
        built_for = metadata.get("AOTI_DEVICE_KEY", "cpu")
        if built_for != device.type:
            raise EngineLoadError(
                f"{path} is an AOTInductor package compiled for {built_for}, but this predictor runs on {device.type} "
                f"(re-export it with `kbundle export --device {device.type}` or set device: {built_for})"
            )
        if AOTI_SIGNATURE_KEY not in metadata:
            raise EngineLoadError(
                f"{path}: AOTInductor package without '{AOTI_SIGNATURE_KEY}' metadata (package it with `kbundle export`)"
            )
        signature, ranges = stored_signature(json.loads(metadata[AOTI_SIGNATURE_KEY]))
        return cls(module, signature, ranges, device, None, "AOTInductor package")

    def capture_graphs(self, buckets: Sequence[int]) -> None:
        """A CUDA graph per batch bucket; requests are padded up to the next bucket at run time."""
        if self.torch_device.type != "cuda":
            logger.info("cuda_graphs ignored: the torch engine runs on %s", self.torch_device)
            return
        if not self.signature.batchable or any(
            DYNAMIC in s.shape[1:] for s in self.signature.inputs
        ):
            raise EngineLoadError("cuda_graphs needs inputs whose only dynamic dim is the batch")
        with torch.inference_mode():
            for bucket in sorted(set(buckets)):
                inputs = [
                    torch.zeros(
                        (bucket, *spec.shape[1:]),
                        dtype=self._input_dtype(spec),
                        device=self.torch_device,
                    )
                    for spec in self.signature.inputs
                ]
                self._graphs[bucket] = _GraphBucket(self.module, inputs)
        logger.info("captured CUDA graphs for batch buckets %s", sorted(self._graphs))

    def _input_dtype(self, spec: TensorSpec) -> torch.dtype:
        base = torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype
        return (
            self.compute_dtype
            if self.compute_dtype is not None and base.is_floating_point
            else base
        )

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        with torch.inference_mode():
            args = [
                torch.from_numpy(np.ascontiguousarray(inputs[spec.name]))
                .to(self.torch_device, non_blocking=True)
                .to(self._input_dtype(spec))
                for spec in self.signature.inputs
            ]
            outputs = self._forward(args)
            by_name = dict(zip(self.signature.output_names, outputs, strict=True))
            return [
                self._to_numpy(by_name[name], self.signature.output(name)) for name in output_names
            ]

    def _forward(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = args[0].shape[0] if args and args[0].dim() else 0
        bucket = next((b for b in sorted(self._graphs) if b >= rows), None)
        if bucket is None:
            return _flatten(self.module(*args))
        with self._graph_lock:  # static buffers are shared: one replay at a time
            return [out.clone() for out in self._graphs[bucket].run(args)]

    @staticmethod
    def _to_numpy(tensor: torch.Tensor, spec: TensorSpec) -> np.ndarray:
        # Outputs leave the device only here, in the signature's dtype (fp16/bf16 runs cast back).
        return tensor.to("cpu").to(torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype).numpy()
