"""ONNX Runtime engine: TensorRT, CUDA, CPU execution providers, in that order of preference."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kbundle.errors import EngineLoadError
from kbundle.predictors.engine import Engine, ShapeRange
from kbundle.settings import ModelSettings, effective_precision
from kbundle.specs import DYNAMIC, Signature, TensorSpec

logger = logging.getLogger("kbundle.engine.onnx")

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
TRT_EP = "TensorrtExecutionProvider"
# The TensorRT EP's engine/timing cache when engine_cache_dir is unset (the model dir is read-only).
DEFAULT_TRT_CACHE = Path(tempfile.gettempdir()) / "kbundle-trt-cache"
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def choose_providers(requested: Sequence[str], available: Sequence[str], device: str) -> list[str]:
    """Providers to ask ORT for, best first; CPU is kept last so unsupported nodes can fall back.

    `requested` (model config) overrides the default preference; names may be short ("cuda").
    """
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested] or list(PREFERRED_PROVIDERS)
    unknown = [p for p in wanted if p not in ort.get_all_providers()]
    if unknown:
        raise EngineLoadError(f"unknown ONNX Runtime execution provider(s) {unknown}")
    if device == "cpu":
        wanted = [p for p in wanted if p not in GPU_PROVIDERS]
    chosen = [p for p in wanted if p in available]
    if device == "cuda" and not any(p in GPU_PROVIDERS for p in chosen):
        raise EngineLoadError(
            f"device: cuda asked for, but this onnxruntime offers only {list(available)} "
            "(install onnxruntime-gpu in place of onnxruntime, on a machine with a CUDA GPU)"
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_options(
    provider: str,
    settings: ModelSettings,
    model_path: Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict:
    precision = effective_precision(settings)
    if provider == "TensorrtExecutionProvider":
        cache = str(trt_cache_dir(settings))
        # ORT keys its own engine cache by model, GPU and shapes; the dir only has to be writable.
        options = {
            "device_id": 0,
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",  # for Q/DQ-quantized models
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
        return {**options, **trt_profile_options(input_shapes or {}, settings)}
    if provider == "CUDAExecutionProvider":
        return {
            "device_id": 0,
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": True,
        }
    return {}


def trt_cache_dir(settings: ModelSettings) -> Path:
    """engine_cache_dir, else a temp dir: never the model dir, which KServe mounts read-only."""
    return Path(settings.engine_cache_dir) if settings.engine_cache_dir else DEFAULT_TRT_CACHE


def ensure_writable(path: Path) -> Path:
    """Create the cache dir and prove it takes a file; EngineLoadError naming the fix if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kbundle-probe-"):
            pass
    except OSError as exc:
        raise EngineLoadError(
            f"the TensorRT EP engine cache {path} is not writable ({exc.strerror or exc}): "
            "point engine_cache_dir at a writable volume (an emptyDir)"
        ) from exc
    return path


def trt_profile_triples(
    input_shapes: Mapping[str, tuple[int, ...]], settings: ModelSettings
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) per dynamic input from profile_batch/profile_seq, the ranges a native plan
    gets; {} when a dynamic dim has no range given (the EP then sizes engines itself)."""
    from kbundle.predictors.engine_builder import BuildSpec, profile_batch_of
    from kbundle.predictors.tensorrt_build import profile_shapes

    spec = BuildSpec(Path(), "fp32", profile_batch_of(settings), tuple(settings.profile_seq))
    triples = {}
    for name, shape in input_shapes.items():
        if DYNAMIC not in shape:
            continue
        try:
            triples[name] = profile_shapes(name, shape, spec)
        except EngineLoadError:
            return {}
    return triples


def trt_profile_options(
    input_shapes: Mapping[str, tuple[int, ...]], settings: ModelSettings
) -> dict[str, str]:
    """One explicit TensorRT EP profile; without it the EP rebuilds its engine whenever a larger
    shape first arrives."""
    triples = trt_profile_triples(input_shapes, settings)
    if not triples:
        return {}

    def joined(which: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, t[which]))}" for n, t in triples.items())

    return {
        "trt_profile_min_shapes": joined(0),
        "trt_profile_opt_shapes": joined(1),
        "trt_profile_max_shapes": joined(2),
    }


def active_profile(
    session: ort.InferenceSession,
    asked: Sequence[str],
    available: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    settings: ModelSettings,
) -> dict[str, ShapeRange]:
    """Log the providers the session really runs on, warn when the TensorRT EP asked for did not
    load (ORT falls back quietly), and return its profile's (min, max) ranges when it did."""
    used = session.get_providers()
    logger.info("onnxruntime session runs on %s (asked %s; offered %s)", used, asked, available)
    if TRT_EP in asked and TRT_EP not in used:
        logger.warning(
            "%s was asked for but did not load (onnxruntime fell back to %s): is libnvinfer on "
            "the loader path?",
            TRT_EP,
            used,
        )
    if not used or used[0] != TRT_EP:
        return {}
    triples = trt_profile_triples(shapes, settings)
    return {name: (t[0], t[2]) for name, t in triples.items()}


def input_shapes_of(path: Path) -> dict[str, tuple[int, ...]]:
    """Input shapes (-1 dynamic) read through a CPU session with no graph optimization (cheap)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {a.name: tensor_spec(a, "input").shape for a in session.get_inputs()}


def tensor_spec(arg: ort.NodeArg, where: str) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise EngineLoadError(
            f"{where} '{arg.name}' has type {arg.type}, which V2 cannot carry "
            "(export classifiers without ZipMap, e.g. skl2onnx options={'zipmap': False})"
        )
    dims = arg.shape or []
    shape = tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in dims)
    # ONNX dim_param names (strings) mark dims that must agree wherever the name recurs.
    return TensorSpec(arg.name, datatype, shape).named(
        [d if isinstance(d, str) else None for d in dims]
    )


class OnnxEngine(Engine):
    kind = "onnx"
    model_file = "model.onnx"

    def __init__(
        self, session: ort.InferenceSession, shape_ranges: Mapping[str, ShapeRange] | None = None
    ):
        self.session = session
        self.shape_ranges = dict(shape_ranges or {})  # the TensorRT EP's explicit profile
        self.signature = Signature.of(
            (tensor_spec(a, "input") for a in session.get_inputs()),
            (tensor_spec(a, "output") for a in session.get_outputs()),
        )
        providers = session.get_providers()
        self.on_gpu = providers[0] in GPU_PROVIDERS
        self.device = ("cuda" if self.on_gpu else "cpu") + f" ({', '.join(providers)})"
        self._string_inputs = {s.name for s in self.signature.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.signature.outputs if s.datatype == "BYTES"}

    @classmethod
    def load(cls, path: Path, settings: ModelSettings) -> OnnxEngine:
        available = ort.get_available_providers()
        providers = choose_providers(settings.execution_providers, available, settings.device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if settings.intra_op_threads:  # the predictor sets it from the CPU budget when unset
            options.intra_op_num_threads = settings.intra_op_threads
            options.inter_op_num_threads = settings.intra_op_threads
        try:
            shapes = input_shapes_of(path) if TRT_EP in providers else {}
            if TRT_EP in providers:
                ensure_writable(trt_cache_dir(settings))
            session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=providers,
                provider_options=[provider_options(p, settings, path, shapes) for p in providers],
            )
        except EngineLoadError:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        return cls(session, active_profile(session, providers, available, shapes, settings))

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        feeds = {name: self._feed(name, array) for name, array in inputs.items()}
        if self.on_gpu and not self._string_inputs and not self._string_outputs:
            outputs = self._run_bound(feeds, output_names)
        else:
            outputs = self.session.run(list(output_names), feeds)
        return [
            self._as_bytes(out) if name in self._string_outputs else out
            for name, out in zip(output_names, outputs, strict=True)
        ]

    def _run_bound(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        """IO binding on GPU: inputs copied up once, only the requested outputs allocated on the
        device, and each copied down once, when the response needs it (no ORT-internal copies)."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()]

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if name in self._string_inputs:
            # ORT string tensors take str objects; V2 BYTES arrive as bytes.
            return np.vectorize(
                lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                otypes=[object],
            )(array)
        return array

    @staticmethod
    def _as_bytes(array: np.ndarray) -> np.ndarray:
        return np.vectorize(
            lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object]
        )(array)
