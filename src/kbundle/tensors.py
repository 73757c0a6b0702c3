"""Codecs at the edge: V2 tensor payloads (raw bytes, JSON lists) <-> numpy arrays.

Raw payloads become numpy *views* of the request buffer (np.frombuffer), never Python lists.
Every failure is an InvalidRequest whose message names the tensor and what was wrong.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence

import numpy as np
import orjson

from kbundle.errors import InvalidRequest
from kbundle.specs import V2_TO_NUMPY, v2_datatype

_LEN = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def check_shape(where: str, shape: Sequence[int]) -> tuple[int, ...]:
    """A request shape as a tuple of non-negative ints, or InvalidRequest."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidRequest(f"{where}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{where}: shape {list(shape)} has a negative dimension")
    return tuple(shape)


def check_datatype(where: str, datatype: str) -> str:
    name = str(datatype).upper()
    if name not in V2_TO_NUMPY:
        raise InvalidRequest(
            f"{where}: unknown datatype {datatype!r} (one of {', '.join(V2_TO_NUMPY)})"
        )
    return name


def array_from_raw(
    where: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray:
    """Decode a binary (REST binary extension / gRPC raw_input_contents) tensor."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(where, shape, count, raw)
    dtype = V2_TO_NUMPY[datatype]
    want = count * dtype.itemsize
    if len(raw) != want:
        raise InvalidRequest(
            f"{where}: {datatype} {list(shape)} needs {want} bytes of data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_from_raw(
    where: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview
) -> np.ndarray:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequest(f"{where}: BYTES data ends inside an element length prefix")
        (size,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidRequest(f"{where}: BYTES element {len(items)} is truncated")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidRequest(
            f"{where}: BYTES {list(shape)} needs {count} elements, got {len(items)}"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def array_from_list(where: str, datatype: str, shape: tuple[int, ...], data: object) -> np.ndarray:
    """Decode a JSON (or gRPC typed-contents) tensor, checking element count and value kinds."""
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten_bytes(where, data)
        if len(flat) != count:
            raise InvalidRequest(
                f"{where}: BYTES {list(shape)} needs {count} elements, got {len(flat)}"
            )
        out = np.empty(count, dtype=object)
        out[:] = flat
        return out.reshape(shape)
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{where}: data is not a regular array of numbers ({exc})") from exc
    if values.size != count:
        raise InvalidRequest(
            f"{where}: {datatype} {list(shape)} needs {count} elements, got {values.size}"
        )
    return _cast_checked(where, datatype, values).reshape(shape)


def _cast_checked(where: str, datatype: str, values: np.ndarray) -> np.ndarray:
    dtype = V2_TO_NUMPY[datatype]
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(dtype)
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidRequest(
                f"{where}: BOOL data must be true/false, got {values.dtype} values"
            )
    elif dtype.kind in "iu":
        _check_integers(where, datatype, dtype, values)
    elif kind not in "iufb":
        raise InvalidRequest(f"{where}: {datatype} data must be numbers, got {_kind_name(kind)}")
    else:
        return _cast_floats(where, datatype, dtype, values)
    return values.astype(dtype, copy=False)


def _check_integers(where: str, datatype: str, dtype: np.dtype, values: np.ndarray) -> None:
    """Integers within the datatype's range. JSON integers past 64 bits reach us as floats
    (whole numbers of magnitude >= 2**63): those are out of range, and said so."""
    kind = values.dtype.kind
    info = np.iinfo(dtype)
    integral = kind in "iub" or (
        kind == "f" and bool(np.isfinite(values).all()) and bool((values == np.trunc(values)).all())
    )
    if not integral:
        raise InvalidRequest(f"{where}: {datatype} data must be integers, got {_kind_name(kind)}")
    beyond_64_bits = kind == "f" and float(np.abs(values).max()) >= 2.0**63
    if beyond_64_bits or values.min() < info.min or values.max() > info.max:
        raise InvalidRequest(
            f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]"
        )
    if kind == "f":
        raise InvalidRequest(f"{where}: {datatype} data must be integers, got floats")


def _cast_floats(where: str, datatype: str, dtype: np.dtype, values: np.ndarray) -> np.ndarray:
    """Cast to FP16/32/64, refusing finite values that would become infinite (1e300 as FP32):
    a silent inf is a different input from the one the client sent."""
    out = values.astype(dtype, copy=False)
    if values.dtype.kind == "f" and not np.isfinite(out).all():
        overflow = np.isfinite(values) & ~np.isfinite(out)
        if overflow.any():
            value = values[overflow].flat[0]
            largest = float(np.finfo(dtype).max)
            raise InvalidRequest(
                f"{where}: value {value:g} does not fit {datatype} (largest magnitude {largest:g})"
            )
    return out


def _kind_name(kind: str) -> str:
    return {
        "f": "floats",
        "U": "strings",
        "S": "strings",
        "O": "mixed values",
        "b": "booleans",
    }.get(kind, kind)


def _flatten_bytes(where: str, data: object) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        elif isinstance(item, (bytes, bytearray)):
            out.append(bytes(item))
        else:
            raise InvalidRequest(
                f"{where}: BYTES elements must be strings, got {type(item).__name__}"
            )
    return out


def raw_from_array(array: np.ndarray) -> bytes:
    """Encode an array as V2 raw bytes (BYTES elements length-prefixed, little-endian)."""
    if v2_datatype(array.dtype) == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def list_from_array(array: np.ndarray) -> list | orjson.Fragment:
    """Flat JSON-ready list (BYTES as UTF-8 strings, as Triton sends them).

    NaN and +-Inf go out as the bare tokens NaN, Infinity and -Infinity, as Triton writes them
    (rapidjson kWriteNanAndInfFlag) and tritonclient reads them (python-rapidjson): JSON null
    would make the three indistinguishable.
    """
    if v2_datatype(array.dtype) == "BYTES":
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    flat = array.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return orjson.Fragment(json.dumps(flat.tolist(), allow_nan=True))
    return flat.tolist()


def param_bool(where: str, name: str, value: object) -> bool:
    """A boolean parameter must be a JSON boolean: the string "false" is not false."""
    if isinstance(value, bool):
        return value
    raise InvalidRequest(
        f"{where}: parameter '{name}' must be true or false (a JSON boolean), got {value!r}"
    )
