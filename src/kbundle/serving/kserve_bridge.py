"""Calls a plain kserve.Model (one that is not an ArrayModel) from our array-based routes."""

from __future__ import annotations

from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from kbundle.errors import EngineError
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.specs import v2_datatype


async def infer_via_dataplane(
    dataplane: DataPlane, model_name: str, request: ArrayRequest
) -> ArrayResponse:
    inputs = []
    for name, array in request.inputs.items():
        tensor = InferInput(name=name, shape=list(array.shape), datatype=v2_datatype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    infer_request = InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=request.id,
        parameters=request.parameters or None,
    )
    result, headers = await dataplane.infer(model_name, infer_request, request.headers)
    if not isinstance(result, InferResponse):
        raise EngineError(
            f"model '{model_name}' returned {type(result).__name__}, not a V2 response"
        )
    outputs = {out.name: out.as_numpy() for out in result.outputs}
    if request.requested_outputs:
        outputs = {name: outputs[name] for name in request.requested_outputs if name in outputs}
    return ArrayResponse(
        outputs=outputs, model_version=result.model_version or "", headers=headers or {}
    )
