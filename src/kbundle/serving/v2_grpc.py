"""V2 gRPC: codec (ModelInferRequest <-> ArrayRequest), the grpc.aio servicer and error interceptor.

Raw input contents become numpy views; outputs always go back as raw_output_contents, which
every V2 client reads and which FP16 needs (the typed-contents map has no FP16).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer

from kbundle.errors import InvalidRequest
from kbundle.serving import limits
from kbundle.serving.arrays import ArrayRequest, ArrayResponse, new_request_id
from kbundle.serving.core import CallContext, Decoder, RequestCore, as_error
from kbundle.serving.status_map import log_if_internal
from kbundle.specs import v2_datatype
from kbundle.status import grpc_code
from kbundle.tensors import array_from_list, array_from_raw, check_datatype, raw_from_array
from kbundle.validation import SignatureValidator, duplicate_name

logger = logging.getLogger("kbundle.grpc")
GRPC_AIO = CallContext(protocol="grpc")
NO_DEADLINE_S = 10**8  # about three years: grpcio reports "no deadline" as a far future
GRPC_DEADLINE_GRACE_S = 0.005

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param_value(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def decode_request(
    request: pb.ModelInferRequest, validator: SignatureValidator | None, headers: dict[str, str]
) -> ArrayRequest:
    # Each read of a upb message field builds a wrapper (iterating a repeated field ~2 us even
    # for one element): every field is read once.
    tensors = list(request.inputs)
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(tensors):
        raise InvalidRequest(
            f"{len(tensors)} inputs but {len(raw)} raw_input_contents: give one per input"
        )
    if not tensors:
        raise InvalidRequest("request field 'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        where = validator.where("input", name) if validator else f"input '{name}'"
        datatype = check_datatype(where, tensor.datatype)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"{where}: shape {list(shape)} has a negative dimension")
        if validator is not None:
            validator.check_input(name, datatype, shape)
        if name in arrays:  # found as it arrives: one pass, before decoding any more
            raise duplicate_name(validator.model_name if validator else "", "input", name)
        arrays[name] = _decode_tensor(where, datatype, shape, tensor, raw[index] if raw else None)
    if validator is not None:
        validator.check_complete(arrays)  # names are unique by now: the dict holds them all
        validator.check_batch(arrays)
    outputs = request.outputs
    requested = [out.name for out in outputs] if len(outputs) else None
    if validator is not None and requested:
        validator.check_outputs(requested)
    parameters = request.parameters
    return ArrayRequest(
        id=request.id or new_request_id(),
        inputs=arrays,
        requested_outputs=requested,
        parameters={k: _param_value(v) for k, v in parameters.items()} if len(parameters) else {},
        headers=headers,
    )


def _decode_tensor(
    where: str,
    datatype: str,
    shape: tuple[int, ...],
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | None,
) -> np.ndarray:
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidRequest(f"{where}: give either contents or raw_input_contents, not both")
        return array_from_raw(where, datatype, shape, raw)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(f"{where}: {datatype} must be sent in raw_input_contents")
    return array_from_list(where, datatype, shape, list(getattr(tensor.contents, field)))


def encode_response(
    model_name: str, request: ArrayRequest, response: ArrayResponse
) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=model_name, model_version=response.model_version, id=request.id
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape))
        message.raw_output_contents.append(raw_from_array(array))
    for key, value in response.parameters.items():
        _set_param(message.parameters[key], value)
    return message


def _set_param(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    else:
        param.string_param = str(value)


class ArrayServicer(InferenceServicer):
    """kserve's servicer with ModelInfer going through the request core, on grpc.aio (the
    transformer's server; the predictor's sync server uses grpc_sync.model_infer_behavior)."""

    def __init__(self, data_plane: Any, model_repository_extension: Any, core: RequestCore):
        super().__init__(data_plane, model_repository_extension)
        self.core = core

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        # Errors leave as KBundleErrors, which StatusInterceptor maps.
        decode = grpc_decoder(request, context)
        return await self.core.infer(request.model_name, decode, GRPC_AIO, encode_response)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """kserve's, plus the `platform` our REST metadata gives (kserve's dataplane says "")."""
        response = await super().ModelMetadata(request, context)
        model = self._data_plane.model_registry.get_model(request.name)
        response.platform = getattr(model, "platform", "") or response.platform
        return response


def grpc_decoder(request: pb.ModelInferRequest, context: Any) -> Decoder:
    """The core's decoder for one ModelInferRequest (headers from the call's metadata)."""

    def decode(validator: SignatureValidator | None) -> ArrayRequest:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        decoded = decode_request(request, validator, headers)
        # The call's own gRPC deadline is copied too: grpc cancels the call when it passes, but
        # that cancel reaches the batcher only when grpcio's poll thread gets to it (late on a
        # busy core), while the batcher checks a deadline itself before every dispatch.
        arrived = getattr(context, "started", None)  # the lean server's call: its headers' time
        own = [
            limits.request_deadline(decoded.parameters, headers, arrived),
            grpc_deadline(context),
        ]
        decoded.deadline = min((d for d in own if d is not None), default=None)
        return decoded

    return decode


def grpc_deadline(context: Any) -> float | None:
    """The call's gRPC deadline as a time.monotonic() plus a grace, or None when it has none.
    The grace lets grpc end the call itself first (the client then reads DEADLINE_EXCEEDED);
    the batcher's check only catches calls whose cancel has not reached it yet."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:  # grpcio: a far-future deadline = none
        return None
    return time.monotonic() + remaining + GRPC_DEADLINE_GRACE_S


class StatusInterceptor(AsyncExceptionToStatusInterceptor):
    """Maps every exception through the shared table (kbundle.status), for grpc.aio servers.
    KbundleGRPCServer (sync server) maps inside its handlers (grpc_sync.abort_mapped)."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        log_if_internal(ex, method_name)
        error = as_error(ex)
        await context.abort(grpc_code(error.status), error.message)
