"""The real ONNX -> TensorRT build (TensorRT 10.x Python API only); needs a GPU and `tensorrt`.

Called by engine_builder through the cache, never directly: `build_plan(spec, out_path)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kbundle.errors import EngineLoadError
from kbundle.predictors import cuda_device
from kbundle.predictors.engine_builder import BuildSpec

logger = logging.getLogger("kbundle.engine_builder")

WORKSPACE_BYTES = 4 << 30  # cap on TensorRT's scratch memory while choosing tactics
SUPPORTED_MAJOR = "10"  # the API written against (pyproject pins tensorrt-cu12>=10.9,<11)


def profile_shapes(
    name: str, shape: tuple[int, ...], spec: BuildSpec
) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) for one network input: batch dim from profile_batch, others from profile_seq."""
    triple = []
    for which in range(3):
        dims = []
        for axis, dim in enumerate(shape):
            if dim >= 0:
                dims.append(dim)
            elif axis == 0:
                dims.append(spec.profile_batch[which])
            elif spec.profile_seq:
                dims.append(spec.profile_seq[which])
            else:
                raise EngineLoadError(
                    f"input '{name}' dim {axis} is dynamic: set profile_seq (min,opt,max) to build a TensorRT profile"
                )
        triple.append(tuple(dims))
    return tuple(triple)


def calibration_set(
    path: Path, inputs: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> tuple[dict[str, np.ndarray], int]:
    """calibration.npz's arrays in each input's own dtype, checked against the profile's opt shape.

    TensorRT calibrates at the calibration profile's *opt* shape (min and max are overwritten by
    opt, and `get_batch_size()` is ignored since TensorRT 10), so every row must have opt's
    non-batch dims.
    """
    data = np.load(path)
    missing = [name for name in inputs if name not in data]
    if missing:
        raise EngineLoadError(f"{path} lacks arrays for inputs {missing}")
    arrays = {}
    for name, (opt, dtype) in inputs.items():
        array = np.asarray(data[name])
        if array.ndim != len(opt) or array.shape[1:] != tuple(opt[1:]):
            raise EngineLoadError(
                f"{path} array '{name}' has shape {list(array.shape)}; TensorRT calibrates at the "
                f"profile's opt shape {list(opt)}, so give rows of {list(opt[1:])} (set profile_seq to match)"
            )
        arrays[name] = np.ascontiguousarray(array, dtype=dtype)
    rows = min(len(a) for a in arrays.values())
    if rows == 0:
        raise EngineLoadError(f"{path} holds no calibration rows")
    return arrays, rows


def batch_rows(index: int, batch: int, rows: int) -> np.ndarray:
    """Row indices of calibration batch `index`: exactly `batch` rows (TensorRT reads an opt-sized
    tensor), wrapping around to the first rows when the set runs out or is smaller than opt."""
    return np.arange(index * batch, (index + 1) * batch) % rows


def _calibrator(
    trt: Any, spec: BuildSpec, inputs: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> Any:
    """An entropy calibrator feeding calibration.npz at the opt shape, every row at least once."""
    arrays, rows = calibration_set(spec.calibration_path, inputs)
    batch = spec.profile_batch[1]
    batches = -(-rows // batch)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers: dict[str, cuda_device.DeviceBuffer] = {}
            self.stream = cuda_device.Stream()
            try:
                for name, array in arrays.items():  # opt-sized, in the input's own dtype
                    self.buffers[name] = cuda_device.DeviceBuffer(batch * array[0].nbytes)
            except BaseException:
                self.close()
                raise

        def get_batch_size(self) -> int:
            return batch  # ignored by TensorRT 10 (it calibrates at the opt shape); kept consistent

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= batches:
                return None
            picked = batch_rows(self.index, batch, rows)
            staged = [np.ascontiguousarray(arrays[name][picked]) for name in names]
            for name, chunk in zip(names, staged, strict=True):
                self.buffers[name].upload(chunk, self.stream)
            self.stream.synchronize()  # `staged` stays alive until the copies are done
            self.index += 1
            return [self.buffers[name].ptr for name in names]

        def close(self) -> None:
            for buffer in self.buffers.values():
                buffer.close()
            self.stream.close()

        def read_calibration_cache(self) -> bytes | None:
            return None  # the plan cache already keys on the calibration set's digest

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return Calibrator()


def check_version(trt: Any) -> None:
    """The builder is written for the TensorRT 10 API; say so instead of an AttributeError."""
    if trt.__version__.split(".")[0] != SUPPORTED_MAJOR:
        raise EngineLoadError(
            f"TensorRT {trt.__version__} is installed, but kbundle builds plans with the TensorRT "
            f"{SUPPORTED_MAJOR} API (TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8 "
            "calibrator): install the `gpu` extra's tensorrt-cu12>=10.9,<11"
        )


def build_plan(spec: BuildSpec, out_path: Path) -> None:
    """Parse the ONNX file, add one optimization profile, build and write the serialized plan.

    Every failure is an EngineLoadError with one line: TensorRT API errors (an AttributeError on
    an API another TensorRT version lacks, a TypeError, CUDA errors) are caught here.
    """
    import tensorrt as trt

    check_version(trt)
    try:
        _build(trt, spec, out_path)
    except EngineLoadError:
        raise
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise EngineLoadError(
            f"TensorRT {trt.__version__} could not build {spec.onnx_path}: {type(exc).__name__}: {first}"
        ) from exc


def _build(trt: Any, spec: BuildSpec, out_path: Path) -> None:
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineLoadError(f"TensorRT cannot parse {spec.onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    opt_inputs = {}  # name -> (opt shape, numpy dtype): what the calibrator must feed
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = profile_shapes(tensor.name, tuple(tensor.shape), spec)
        profile.set_shape(tensor.name, lo, opt, hi)
        opt_inputs[tensor.name] = (opt, np.dtype(trt.nptype(tensor.dtype)))
    config.add_optimization_profile(profile)
    if spec.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    calibrator = None  # held here: TensorRT calls back into it during the build
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        calibrator = _calibrator(trt, spec, opt_inputs)
        config.int8_calibrator = calibrator
    logger.info(
        "TensorRT %s: building %s (%s, opt shapes %s)",
        trt.__version__,
        spec.onnx_path,
        spec.precision,
        {name: opt for name, (opt, _) in opt_inputs.items()},
    )
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if serialized is None:
        raise EngineLoadError(f"TensorRT failed to build {spec.onnx_path} (see the log above)")
    out_path.write_bytes(bytes(serialized))
