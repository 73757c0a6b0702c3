"""The real ONNX -> TensorRT build (TensorRT 10 Python API); needs a GPU and `tensorrt`.

Called by engine_builder through the cache, never directly: `build_plan(spec, out_path)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from kbundle.predictors import cuda_device
from kbundle.predictors.engine_builder import BuildSpec

from kbundle.errors import EngineLoadError

logger = logging.getLogger("kbundle.engine_builder")

WORKSPACE_BYTES = 4 << 30  # cap on TensorRT's scratch memory while choosing tactics


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


def _calibrator(trt: Any, spec: BuildSpec, inputs: dict[str, tuple[int, ...]]) -> Any:
    """An entropy calibrator feeding calibration.npz (arrays named after the inputs) in batches."""
    data = np.load(spec.calibration_path)
    missing = [name for name in inputs if name not in data]
    if missing:
        raise EngineLoadError(f"{spec.calibration_path} lacks arrays for inputs {missing}")
    arrays = {name: np.ascontiguousarray(data[name], dtype=np.float32) for name in inputs}
    rows = min(len(a) for a in arrays.values())
    batch = min(spec.profile_batch[1], rows)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers = {
                n: cuda_device.DeviceBuffer(a[:batch].nbytes) for n, a in arrays.items()
            }
            self.stream = cuda_device.Stream()

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + batch > rows:
                return None
            for name in names:
                chunk = np.ascontiguousarray(arrays[name][self.index : self.index + batch])
                self.buffers[name].upload(chunk, self.stream)
                self.stream.synchronize()
            self.index += batch
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


def build_plan(spec: BuildSpec, out_path: Path) -> None:
    """Parse the ONNX file, add one optimization profile, build and write the serialized plan."""
    import tensorrt as trt

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
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = profile_shapes(tensor.name, tuple(tensor.shape), spec)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = opt
    config.add_optimization_profile(profile)
    if spec.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    calibrator = None  # held here: TensorRT calls back into it during the build
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        calibrator = _calibrator(trt, spec, shapes)
        config.int8_calibrator = calibrator
    logger.info(
        "TensorRT %s: building %s (%s, profiles %s)",
        trt.__version__,
        spec.onnx_path,
        spec.precision,
        shapes,
    )
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if serialized is None:
        raise EngineLoadError(f"TensorRT failed to build {spec.onnx_path} (see the log above)")
    out_path.write_bytes(bytes(serialized))
