"""Native TensorRT engine (`model.plan`), TensorRT 10 name-based tensor API.

One execution context per instance, each with its own CUDA stream, device buffers and pinned
(page-locked) host buffers sized once, at load time, for the optimization profile's max shapes:
a call copies the request into the pinned buffers, queues the host->device copies, one enqueue
and the requested outputs' device->host copies, syncs once, and copies the outputs out.
The signature (dynamic dims = -1) and the profile ranges come from the engine itself; a
request outside the profile range is refused with a 400 before it reaches the GPU.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbundle.errors import EngineError, EngineLoadError
from kbundle.predictors import cuda_device
from kbundle.predictors.dim_names import onnx_dim_names, with_dim_names
from kbundle.predictors.engine import Engine, ShapeRange
from kbundle.settings import ModelSettings
from kbundle.specs import DYNAMIC, Signature, TensorSpec

logger = logging.getLogger("kbundle.engine.tensorrt")

# trt.DataType member name -> V2 datatype. BF16/FP8/INT4 I/O have no numpy/V2 form: refused at load.
TRT_TO_V2 = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


@dataclass(frozen=True)
class IoTensor:
    """One engine I/O tensor as read from the plan (kept free of TensorRT types, for tests)."""

    name: str
    is_input: bool
    dtype_name: str  # trt.DataType member name
    shape: tuple[int, ...]  # -1 for dynamic
    # Per optimization profile: (min, opt, max); inputs only.
    profiles: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()


def signature_of(tensors: Sequence[IoTensor]) -> Signature:
    """The frozen signature: names, V2 datatypes, shapes with -1 for dynamic dims."""
    specs: dict[bool, list[TensorSpec]] = {True: [], False: []}
    for tensor in tensors:
        datatype = TRT_TO_V2.get(tensor.dtype_name)
        if datatype is None:
            kind = "input" if tensor.is_input else "output"
            raise EngineLoadError(
                f"{kind} '{tensor.name}' is {tensor.dtype_name}, which V2/numpy cannot carry "
                "(cast it to FP32/FP16 at the network boundary)"
            )
        shape = tuple(d if d >= 0 else DYNAMIC for d in tensor.shape)
        specs[tensor.is_input].append(TensorSpec(tensor.name, datatype, shape))
    return Signature.of(specs[True], specs[False])


def shape_ranges_of(tensors: Sequence[IoTensor]) -> dict[str, ShapeRange]:
    """Per dynamic input: the shapes every profile accepts (the intersection over profiles).

    Contexts are spread over the profiles, so a request must fit whichever one it lands on.
    """
    ranges: dict[str, ShapeRange] = {}
    for tensor in tensors:
        if not tensor.is_input or DYNAMIC not in tensor.shape or not tensor.profiles:
            continue
        low = tuple(max(p[0][i] for p in tensor.profiles) for i in range(len(tensor.shape)))
        high = tuple(min(p[2][i] for p in tensor.profiles) for i in range(len(tensor.shape)))
        ranges[tensor.name] = (low, high)
    return ranges


def read_io_tensors(engine: Any, trt: Any) -> list[IoTensor]:
    """The plan's I/O tensors, with each input's min/opt/max for every optimization profile."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        if engine.is_shape_inference_io(name):
            raise EngineLoadError(
                f"tensor '{name}' is a shape tensor; kbundle serves execution tensors only"
            )
        shape = tuple(engine.get_tensor_shape(name))
        profiles = ()
        if is_input and DYNAMIC in shape:
            profiles = tuple(
                tuple(tuple(dims) for dims in engine.get_tensor_profile_shape(name, p))
                for p in range(engine.num_optimization_profiles)
            )
        tensors.append(
            IoTensor(name, is_input, engine.get_tensor_dtype(name).name, shape, profiles)
        )
    return tensors


def check_plan_target(plan: Path, gpu: cuda_device.GpuInfo, trt_version: str) -> None:
    """Refuse early, in words, a plan that `kbundle build` made for another GPU or TensorRT."""
    meta_path = plan.with_name(plan.name + ".json")
    if not meta_path.is_file():
        return  # a plan from elsewhere: TensorRT's own deserializer is the only check
    meta = json.loads(meta_path.read_text())
    built_cc, built_trt = meta.get("compute_capability"), meta.get("tensorrt_version")
    if built_cc != gpu.compute_capability or built_trt != trt_version:
        raise EngineLoadError(
            f"{plan} was built for sm {built_cc} / TensorRT {built_trt}, this is {gpu.name} sm "
            f"{gpu.compute_capability} / TensorRT {trt_version}: run `kbundle build {plan.parent}`"
        )


class _Slot:
    """One execution context with its stream, max-size device buffers and pinned host buffers
    (one slot per instance). A slot that fails half-way releases what it made before raising."""

    def __init__(self, engine: Any, profile: int, tensors: Sequence[IoTensor], trt: Any):
        self.context: Any = None
        self.stream: cuda_device.Stream | None = None
        self.buffers: dict[str, cuda_device.DeviceBuffer] = {}
        self.host: dict[str, cuda_device.PinnedBuffer] = {}
        try:
            self._setup(engine, profile, tensors, trt)
        except BaseException:
            self.close()
            raise

    def _setup(self, engine: Any, profile: int, tensors: Sequence[IoTensor], trt: Any) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError(
                "TensorRT could not create an execution context (out of GPU memory?)"
            )
        self.stream = cuda_device.Stream()
        if engine.num_optimization_profiles > 1 and not self.context.set_optimization_profile_async(
            profile, int(self.stream)
        ):
            raise EngineLoadError(f"TensorRT refused optimization profile {profile} for a context")
        # Size buffers by setting every input to its profile max and reading the outputs' shapes.
        for tensor in tensors:
            if tensor.is_input:
                shape = tensor.profiles[profile][2] if tensor.profiles else tensor.shape
                if not self.context.set_input_shape(tensor.name, shape):
                    raise EngineLoadError(
                        f"TensorRT refused input '{tensor.name}' at its profile max {list(shape)}"
                    )
        for tensor in tensors:
            self._bind(tensor, trt)

    def _bind(self, tensor: IoTensor, trt: Any) -> None:
        shape = tuple(self.context.get_tensor_shape(tensor.name))
        if DYNAMIC in shape:
            raise EngineLoadError(
                f"output '{tensor.name}' has a data-dependent shape; not supported"
            )
        itemsize = np.dtype(trt.nptype(getattr(trt.DataType, tensor.dtype_name))).itemsize
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        self.buffers[tensor.name] = buffer = cuda_device.DeviceBuffer(nbytes)
        self.host[tensor.name] = cuda_device.PinnedBuffer(nbytes)
        # Addresses never change: buffers are fixed, so they are bound once here.
        if not self.context.set_tensor_address(tensor.name, buffer.ptr):
            raise EngineLoadError(f"TensorRT refused the device address for tensor '{tensor.name}'")

    def close(self) -> None:
        """Release everything this slot holds; a failing free is logged, the rest still freed."""
        for item in [*self.buffers.values(), *self.host.values(), self.stream]:
            if item is None:
                continue
            try:
                item.close()
            except cuda_device.CudaError as exc:
                logger.warning("releasing TensorRT slot resources: %s", exc)
        self.buffers, self.host, self.stream = {}, {}, None
        self.context = None  # the last reference: TensorRT destroys the context


class TensorRTEngine(Engine):
    kind = "tensorrt"
    model_file = "model.plan"

    def __init__(
        self,
        engine: Any,
        tensors: Sequence[IoTensor],
        instances: int,
        gpu: cuda_device.GpuInfo,
        trt: Any,
    ):
        self._engine = engine
        self.signature = signature_of(tensors)
        self.shape_ranges = shape_ranges_of(tensors)
        self.device = f"cuda:{gpu.index} ({gpu.name}, sm {gpu.compute_capability}, TensorRT {trt.__version__})"
        self._dtypes = {
            spec.name: spec.dtype for spec in self.signature.inputs + self.signature.outputs
        }
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._made: list[_Slot] = []
        try:
            for i in range(instances):
                slot = _Slot(engine, i % engine.num_optimization_profiles, tensors, trt)
                self._made.append(slot)
                self._slots.put(slot)
        except BaseException:
            self.close()  # the slots made before the failing one: no leak, even under fallback
            raise

    @classmethod
    def load(cls, path: Path, settings: ModelSettings) -> TensorRTEngine:
        if settings.device == "cpu":
            raise EngineLoadError(
                "device: cpu asked for, but a TensorRT plan runs on CUDA only (serve model.onnx or model.pt2)"
            )
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineLoadError(
                f"the tensorrt Python package is not installed here ({exc})"
            ) from exc
        gpu = cuda_device.gpu_info(0)
        check_plan_target(path, gpu, trt.__version__)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineLoadError(
                f"TensorRT {trt.__version__} cannot deserialize {path} on {gpu.name} (sm {gpu.compute_capability}): "
                "a plan only loads on the GPU model and TensorRT version that built it; rebuild it with `kbundle build`"
            )
        try:
            instance = cls(engine, read_io_tensors(engine, trt), settings.instances, gpu, trt)
        except cuda_device.CudaError as exc:
            raise EngineLoadError(f"CUDA setup for {path} failed: {exc}") from exc
        instance._runtime = runtime  # the runtime must outlive the engine it made
        # Dim names (shared dims, padding) from the ONNX the plan was built from, if beside it.
        names = onnx_dim_names(path.with_name("model.onnx"))
        instance.signature = with_dim_names(instance.signature, names)
        return instance

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        slot = (
            self._slots.get()
        )  # one context per concurrent call; the runner has one thread per instance
        try:
            return self._run(slot, inputs, output_names)
        except cuda_device.CudaError as exc:
            raise EngineError(f"TensorRT call failed: {exc}") from exc
        finally:
            self._slots.put(slot)

    def _run(
        self, slot: _Slot, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        """Inputs copied into the slot's pinned buffers, then async H2D, one enqueue, async D2H
        into pinned buffers, one sync; the outputs are copied out of them (the slot is reused)."""
        context, stream = slot.context, slot.stream
        for spec in self.signature.inputs:
            array = np.asarray(inputs[spec.name])
            if not context.set_input_shape(spec.name, array.shape):
                # The request's shapes, not the server: predictors/faults.py answers it with a 400.
                raise ValueError(
                    f"TensorRT refused shape {list(array.shape)} for input '{spec.name}'"
                )
            host = slot.host[spec.name].view(array.shape, spec.dtype)
            np.copyto(host, array, casting="unsafe")  # to the plan's dtype
            slot.buffers[spec.name].upload(host, stream)
        unresolved = context.infer_shapes()
        if unresolved:
            raise ValueError(f"TensorRT could not infer the shapes of {list(unresolved)}")
        if not context.execute_async_v3(int(stream)):
            raise EngineError("TensorRT execute_async_v3 failed (see the server log)")
        staged = []
        for name in output_names:
            host = slot.host[name].view(tuple(context.get_tensor_shape(name)), self._dtypes[name])
            slot.buffers[name].download(host, stream)
            staged.append(host)
        stream.synchronize()
        return [host.copy() for host in staged]

    def close(self) -> None:
        while self._made:
            self._made.pop().close()
        while not self._slots.empty():
            self._slots.get_nowait()
