"""V2 REST codec: JSON and binary-extension bodies <-> ArrayRequest/ArrayResponse.

Unlike kserve 0.21 this does not need a Content-Type (tritonclient.http sends none for JSON
bodies), decodes binary tensors as numpy views rather than Python lists, and never writes null
fields (Triton's perf_analyzer cannot parse `"parameters": null`).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping

import numpy as np
import orjson

from kbundle.errors import InvalidRequest
from kbundle.serving.arrays import ArrayRequest, ArrayResponse, new_request_id
from kbundle.specs import v2_datatype
from kbundle.tensors import (
    array_from_list,
    array_from_raw,
    check_datatype,
    check_shape,
    list_from_array,
    param_bool,
    raw_from_array,
)
from kbundle.validation import SignatureValidator, duplicate_name

HEADER_LENGTH = "inference-header-content-length"


def parse_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """Split a V2 REST body into its JSON header and the binary tail that follows it."""
    view = memoryview(body)
    json_len = len(body)
    if header_length is not None:
        try:
            json_len = int(header_length)
        except ValueError:
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if not 0 <= json_len <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} is {json_len} but the body has only {len(body)} bytes"
            )
    header = _loads(view[:json_len])
    if not isinstance(header, dict):
        raise InvalidRequest("request body must be a JSON object with an 'inputs' list")
    return header, view[json_len:]


def _loads(data: memoryview) -> object:
    """orjson.loads with the cyclic GC paused: a JSON header holds no cycles, and a body of
    60,000 small tensors otherwise triggers collections whose cost grows with the heap
    (measured 0.3 s instead of 0.06 s for 3.8 MB), so parsing stays linear in the body."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raw = bytes(data)
        if b"NaN" in raw or b"Infinity" in raw:  # Triton reads these tokens; orjson does not
            return _loads_non_finite(raw, exc)
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    finally:
        if was_enabled:
            gc.enable()


def _loads_non_finite(data: bytes, first: Exception) -> object:
    try:
        return json.loads(data)
    except ValueError:
        raise InvalidRequest(f"request body is not valid JSON: {first}") from None


def decode_request(
    body: bytes,
    header_length: str | None,
    validator: SignatureValidator | None,
    headers: Mapping[str, str],
) -> ArrayRequest:
    header, tail = parse_body(body, header_length)
    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidRequest("request field 'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(inputs_json):
        name, array, used = _decode_input(index, tensor, tail, offset, validator)
        if name in arrays:  # found as it arrives: one pass, before decoding any more
            raise duplicate_name(validator.model_name if validator else "", "input", name)
        arrays[name] = array
        offset += used
    if offset != len(tail):
        raise InvalidRequest(
            f"binary data is {len(tail)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    if validator is not None:
        validator.check_complete([t.get("name") for t in inputs_json])
        validator.check_batch(arrays)
    requested, binary_by_name = _requested_outputs(header)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest("request field 'parameters' must be an object")
    if validator is not None and requested is not None:
        validator.check_outputs(requested)
    binary_by_name["*"] = param_bool(
        "request", "binary_data_output", parameters.get("binary_data_output", False)
    )
    return ArrayRequest(
        id=_request_id(header.get("id")),
        inputs=arrays,
        requested_outputs=requested,
        parameters=parameters,
        headers=dict(headers),
        binary_outputs=binary_by_name,
    )


def _request_id(value: object) -> str:
    if value is None or value == "":
        return new_request_id()
    if not isinstance(value, str):
        raise InvalidRequest(f"request field 'id' must be a string, got {type(value).__name__}")
    return value


def _decode_input(
    index: int, tensor: object, tail: memoryview, offset: int, validator: SignatureValidator | None
) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise InvalidRequest(f"inputs[{index}] must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{index}].name must be a non-empty string")
    where = validator.where("input", name) if validator else f"input '{name}'"
    for key in ("shape", "datatype"):
        if key not in tensor:
            raise InvalidRequest(f"{where}: field '{key}' is missing")
    shape = check_shape(where, tensor["shape"])
    datatype = check_datatype(where, tensor["datatype"])
    if validator is not None:
        validator.check_input(name, datatype, shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(tail):
            raise InvalidRequest(
                f"{where}: binary_data_size {size!r} does not fit the {len(tail) - offset} bytes left"
            )
        return name, array_from_raw(where, datatype, shape, tail[offset : offset + size]), size
    if "data" not in tensor:
        raise InvalidRequest(f"{where}: field 'data' is missing (and no binary_data_size given)")
    return name, array_from_list(where, datatype, shape, tensor["data"]), 0


def _requested_outputs(header: dict) -> tuple[list[str] | None, dict[str, bool]]:
    outputs = header.get("outputs")
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise InvalidRequest("request field 'outputs' must be a list")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"outputs[{index}] must be an object with a string 'name'")
        names.append(item["name"])
        params = item.get("parameters") or {}
        if isinstance(params, dict) and "binary_data" in params:
            binary[item["name"]] = param_bool(
                f"outputs[{index}]", "binary_data", params["binary_data"]
            )
    return names, binary


def encode_response(
    model_name: str, request: ArrayRequest, response: ArrayResponse
) -> tuple[bytes, dict[str, str]]:
    """Body and headers: JSON only, or JSON header + binary tails where the client asked."""
    per_output = request.binary_outputs
    all_binary = per_output.get("*", False)
    outputs_json = []
    tails: list[bytes] = []
    for name, array in response.outputs.items():
        entry: dict = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if per_output.get(name, all_binary):
            raw = raw_from_array(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            entry["data"] = list_from_array(array)
        outputs_json.append(entry)
    body: dict = {"id": request.id, "model_name": model_name}
    if response.model_version:
        body["model_version"] = response.model_version
    if response.parameters:
        body["parameters"] = response.parameters
    body["outputs"] = outputs_json
    head = orjson.dumps(body)
    headers = dict(response.headers)
    if not tails:
        headers["content-type"] = "application/json"
        return head, headers
    headers["content-type"] = "application/octet-stream"
    headers[HEADER_LENGTH] = str(len(head))
    return b"".join([head, *tails]), headers
