"""Stand-ins for `tensorrt` and the cuda-python runtime, for CPU-only machines.

They implement only the TensorRT 10 / CUDA runtime calls kbundle makes, with "device memory"
that is host memory, so the TensorRT engine's own code (buffers, shapes, addresses, streams,
contexts) runs here. They check our call sequence, never TensorRT itself: the gpu-marked tests
do that on a real GPU. Where TensorRT's behaviour matters to our code they follow it: setters
return bools, the builder calibrates at the profile's *opt* shape and never asks
`get_batch_size()` (TensorRT 10), reading each input in its own dtype from the pointer given.
"""

from __future__ import annotations

import ctypes
import types
from enum import Enum
from pathlib import Path

import numpy as np


# -- CUDA runtime ----------------------------------------------------------------------------
class FakeCudart:
    class cudaError_t:  # noqa: N801 - mirrors cuda-python's names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1

    def __init__(self, fail_malloc_after: int | None = None) -> None:
        self.allocations: dict[int, ctypes.Array] = {}
        self.host_allocations: dict[int, ctypes.Array] = {}
        self.streams_open = 0
        self.copies = 0
        self.fail_malloc_after = fail_malloc_after  # cudaMalloc fails once this many are live

    def size_of(self, ptr: int) -> int:
        """Bytes allocated at `ptr` (device or pinned), 0 when it is no allocation's start."""
        buffer = self.allocations.get(ptr) or self.host_allocations.get(ptr)
        return ctypes.sizeof(buffer) if buffer is not None else 0

    def cudaGetErrorString(self, err):  # noqa: N802
        return 0, b"fake cuda error"

    def cudaGetDeviceCount(self):  # noqa: N802
        return 0, 1

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return 0, types.SimpleNamespace(name=b"Fake GPU", major=9, minor=0)

    def cudaMalloc(self, size):  # noqa: N802
        if self.fail_malloc_after is not None and len(self.allocations) >= self.fail_malloc_after:
            return 2, None  # cudaErrorMemoryAllocation
        buffer = ctypes.create_string_buffer(size)
        self.allocations[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFree(self, ptr):  # noqa: N802
        del self.allocations[ptr]
        return (0,)

    def cudaMallocHost(self, size):  # noqa: N802
        buffer = ctypes.create_string_buffer(size)
        self.host_allocations[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFreeHost(self, ptr):  # noqa: N802
        del self.host_allocations[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, count)
        self.copies += 1
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        self.streams_open += 1
        return 0, self.streams_open

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams_open -= 1
        return (0,)


# -- TensorRT ----------------------------------------------------------------------------------
class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT32 = np.int32
    INT64 = np.int64


def _view(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class FakeEngine:
    """A plan for `probabilities = softmax(input @ W)`, `label = argmax`, batch profile 1..max_batch."""

    def __init__(self, weights: np.ndarray, max_batch: int):
        self.weights = weights
        self.profile = [(1, 64), (8, 64), (max_batch, 64)]
        self.io = {
            "input": (TensorIOMode.INPUT, DataType.FLOAT, (-1, 64)),
            "label": (TensorIOMode.OUTPUT, DataType.INT64, (-1,)),
            "probabilities": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 10)),
        }
        self.num_io_tensors = 3
        self.num_optimization_profiles = 1
        self.contexts = 0  # made
        self.live_contexts = (
            0  # made and not yet released (TensorRT frees a context with its last ref)
        )
        self.fail_context_after: int | None = None  # create_execution_context returns None after n
        self.refused_addresses: set[str] = set()  # set_tensor_address returns False for these
        self.max_accepted = max_batch  # set_input_shape refuses batches above this

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_mode(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return self.io[name][1]

    def get_tensor_shape(self, name):
        return self.io[name][2]

    def is_shape_inference_io(self, name):
        return False

    def get_tensor_profile_shape(self, name, profile):
        return self.profile

    def create_execution_context(self):
        if self.fail_context_after is not None and self.contexts >= self.fail_context_after:
            return None
        self.contexts += 1
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.batch = None
        self.addresses: dict[str, int] = {}
        engine.live_contexts += 1

    def __del__(self):
        self.engine.live_contexts -= 1

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= min(self.engine.profile[2][0], self.engine.max_accepted):
            return False
        self.batch = shape[0]
        return True

    def get_tensor_shape(self, name):
        return {
            "input": (self.batch, 64),
            "label": (self.batch,),
            "probabilities": (self.batch, 10),
        }[name]

    def set_tensor_address(self, name, ptr):
        if name in self.engine.refused_addresses:
            return False
        self.addresses[name] = ptr
        return True

    def set_optimization_profile_async(self, index, stream):
        return 0 <= index < self.engine.num_optimization_profiles

    def infer_shapes(self):
        return []

    def execute_async_v3(self, stream):
        x = _view(self.addresses["input"], (self.batch, 64), np.float32)
        logits = x @ self.engine.weights
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        _view(self.addresses["probabilities"], (self.batch, 10), np.float32)[...] = probs
        _view(self.addresses["label"], (self.batch,), np.int64)[...] = probs.argmax(axis=1)
        return True


def fake_trt_module(engine: FakeEngine | None) -> types.ModuleType:
    """A `tensorrt` module whose Runtime returns `engine` (None: the plan does not deserialize)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    trt.TensorIOMode = TensorIOMode
    trt.DataType = DataType
    trt.nptype = lambda dtype: dtype.value

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            return engine

    trt.Logger = Logger
    trt.Runtime = Runtime
    return trt


# -- TensorRT builder (for tensorrt_build.build_plan) ---------------------------------------------
class FakeBuilderState:
    """What the fake builder saw: the profile, the flags, and every calibration batch it pulled
    (one dict per batch: input name -> the array TensorRT read at the opt shape)."""

    def __init__(
        self,
        inputs: dict[str, tuple[int, ...]],
        cudart: FakeCudart,
        dtypes: dict[str, str] | None = None,
    ):
        self.inputs = inputs
        self.dtypes = {name: (dtypes or {}).get(name, "FLOAT") for name in inputs}
        self.cudart = cudart
        self.profile: dict[str, tuple] = {}
        self.calibration_profile_set = False
        self.flags: set[str] = set()
        self.calibration_rows = 0
        self.calibration_batches: list[dict[str, np.ndarray]] = []


def add_builder(trt: types.ModuleType, state: FakeBuilderState) -> types.ModuleType:
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            state.profile[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            assert pool == "WORKSPACE" and size > 0

        def set_flag(self, flag):
            state.flags.add(flag)

        def add_optimization_profile(self, profile):
            return 0

        def set_calibration_profile(self, profile):
            state.calibration_profile_set = True

    class Network:
        num_inputs = len(state.inputs)

        def get_input(self, i):
            name = list(state.inputs)[i]
            dtype = getattr(trt.DataType, state.dtypes[name])
            return types.SimpleNamespace(name=name, shape=state.inputs[name], dtype=dtype)

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return Path(path).is_file()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 0  # TensorRT 10: explicit batch is implied
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calibrator = config.int8_calibrator
            if calibrator is not None:
                _calibrate(calibrator, state)
            return memoryview(f"plan {sorted(state.flags)} {state.profile}".encode())

    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    trt.OnnxParser = OnnxParser
    trt.Builder = Builder
    return trt


def _calibrate(calibrator, state: FakeBuilderState) -> None:
    """Drive a calibrator as TensorRT 10 does: at the calibration profile's opt shape (never
    `get_batch_size()`), each input read in its own dtype, refusing a read past an allocation."""
    assert state.calibration_profile_set, "INT8 with dynamic shapes needs set_calibration_profile"
    names = list(state.inputs)
    while (pointers := calibrator.get_batch(names)) is not None:
        batch = {}
        for name, ptr in zip(names, pointers, strict=True):
            opt = state.profile[name][1]
            dtype = np.dtype(getattr(DataType, state.dtypes[name]).value)
            need = int(np.prod(opt)) * dtype.itemsize
            have = state.cudart.size_of(ptr)
            if have < need:
                raise AssertionError(
                    f"TensorRT reads {need} bytes of '{name}' at opt shape {opt}, "
                    f"the calibrator's buffer holds {have}"
                )
            batch[name] = _view(ptr, opt, dtype).copy()
        state.calibration_batches.append(batch)
        state.calibration_rows += state.profile[names[0]][1][0]
