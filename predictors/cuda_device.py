"""The few CUDA runtime calls the TensorRT engine and builder need, through cuda-python.

Kept apart so the TensorRT code reads as TensorRT, and so a missing driver or library turns
into one EngineLoadError line instead of an import-time crash. cuda-python is used rather than
torch because a TensorRT image should not carry a 2 GB framework just for cudaMalloc.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from kbundle.errors import EngineLoadError


@functools.cache
def _cudart() -> Any:
    """The cuda-python runtime module (its import path moved in cuda-python 12.6); imported once."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError as exc:
        raise EngineLoadError(
            f"cuda-python is not installed ({exc}); the TensorRT engine needs it (pip install cuda-python)"
        ) from exc


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's own error string."""


def check(result: tuple, call: str) -> Any:
    """Unpack a cuda-python result tuple (err, *values), raising CudaError on failure."""
    cudart = _cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise CudaError(f"{call} failed: {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """What makes a compiled engine non-portable, plus a name for logs."""

    index: int
    name: str
    compute_capability: str  # "9.0"


def gpu_info(device: int = 0) -> GpuInfo:
    """The GPU's name and compute capability; EngineLoadError when there is no usable GPU."""
    cudart = _cudart()
    try:
        count = check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except CudaError as exc:
        raise EngineLoadError(f"no usable CUDA GPU: {exc}") from exc
    if not count or device >= count:
        raise EngineLoadError(f"no CUDA GPU {device} here (found {count or 0})")
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = (
        props.name.decode(errors="replace").rstrip("\x00")
        if isinstance(props.name, bytes)
        else str(props.name)
    )
    return GpuInfo(device, name, f"{props.major}.{props.minor}")


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python handle (`int(obj)` is deprecated since cuda-bindings 12.9.1)."""
    if isinstance(obj, int):
        return obj
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


class Stream:
    """One non-blocking CUDA stream (one per TensorRT execution context)."""

    def __init__(self) -> None:
        cudart = _cudart()
        self._cudart = cudart
        self.handle = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"
        )

    def __int__(self) -> int:
        return native_handle(self.handle)

    def synchronize(self) -> None:
        check(self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(self._cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """A device allocation of fixed size, made once at load time and reused for every call."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = _cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(self._cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        """Queue a host->device copy of a C-contiguous array on `stream` (caller keeps it alive)."""
        if array.nbytes > self.nbytes:
            raise CudaError(f"upload of {array.nbytes} bytes into a {self.nbytes}-byte buffer")
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(
            self._cudart.cudaMemcpyAsync(
                self.ptr, array.ctypes.data, array.nbytes, kind, stream.handle
            ),
            "cudaMemcpyAsync(H2D)",
        )

    def download(self, out: np.ndarray, stream: Stream) -> None:
        """Queue a device->host copy into `out`; valid once the stream is synchronized."""
        if out.nbytes > self.nbytes:
            raise CudaError(f"download of {out.nbytes} bytes from a {self.nbytes}-byte buffer")
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(
            self._cudart.cudaMemcpyAsync(
                out.ctypes.data, self.ptr, out.nbytes, kind, stream.handle
            ),
            "cudaMemcpyAsync(D2H)",
        )

    def close(self) -> None:
        if self.ptr:
            check(self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost), made once at load time: copies between it and the
    device are truly asynchronous on the stream (pageable memory makes the driver stage and block)."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = _cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(
            check(self._cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})")
        )

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (valid until close)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise CudaError(
                f"{list(shape)} {dtype} does not fit a {self.nbytes}-byte pinned buffer"
            )
        raw = (ctypes.c_char * max(count * dtype.itemsize, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            check(self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0
