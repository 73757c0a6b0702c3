"""Triton's model-configuration extension, served from the engine signature and batching settings.

perf_analyzer and Triton's model analyzer ask `GET /v2/models/NAME/config` (or gRPC
`inference.GRPCInferenceService/ModelConfig`) before anything else and stop when it is missing;
kserve's generated servicer has no such RPC, so it is added as a generic gRPC handler.
Also replaces kserve's model metadata route, whose JSON carries `"versions": null`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from fastapi import FastAPI, Response

from kbundle.errors import ModelNotFoundError, ModelUnavailable
from kbundle.predictors.predictor import EnginePredictor
from kbundle.serving.rest_routes import json_response
from kbundle.specs import TensorSpec

if TYPE_CHECKING:
    from kbundle.serving.server import KbundleGRPCServer, KbundleRESTServer

# engine kind -> (Triton platform, Triton backend)
PLATFORMS = {
    "onnx": ("onnxruntime_onnx", "onnxruntime"),
    "tensorrt": ("tensorrt_plan", "tensorrt"),
    "torch": ("pytorch_libtorch", "pytorch"),
}
SERVICE = "inference.GRPCInferenceService"


def _tensor(spec: TensorSpec, batched: bool) -> dict:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {
        "name": spec.name,
        "data_type": "TYPE_" + ("STRING" if spec.datatype == "BYTES" else spec.datatype),
        "dims": dims,
    }


def model_config(model: EnginePredictor) -> dict:
    """The Triton model config (JSON form, no null fields) for a loaded predictor.

    With the batcher on, max_batch_size > 0 and dims leave out the batch dim (Triton's rule);
    without it the model reports max_batch_size 0 and full shapes, -1 where dynamic.
    """
    signature = model.signature
    batched = model.batcher is not None
    platform, backend = PLATFORMS.get(model.loaded_engine.kind, ("", model.loaded_engine.kind))
    config: dict = {"name": model.name, "platform": platform, "backend": backend}
    config["max_batch_size"] = model.settings.max_batch_size if batched else 0
    config["input"] = [_tensor(s, batched) for s in signature.inputs]
    config["output"] = [_tensor(s, batched) for s in signature.outputs]
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(model.settings.max_batch_delay_ms * 1000),
            "preferred_batch_size": [model.settings.max_batch_size],
        }
    kind = "KIND_GPU" if model.loaded_engine.device.startswith("cuda") else "KIND_CPU"
    config["instance_group"] = [{"count": model.settings.instances, "kind": kind}]
    return config


def model_metadata(model: EnginePredictor) -> dict:
    meta: dict = {"name": model.name}
    if model.settings.model_version:
        meta["versions"] = [model.settings.model_version]
    meta["platform"] = PLATFORMS.get(model.loaded_engine.kind, ("", ""))[0]
    meta["inputs"] = model.get_input_types()
    meta["outputs"] = model.get_output_types()
    return meta


def _served(models, name: str) -> EnginePredictor:
    model = models.get_model(name)
    if not isinstance(model, EnginePredictor):
        raise ModelNotFoundError(f"model '{name}' is not served here")
    if not model.ready:
        raise ModelUnavailable(f"model '{name}' is not ready")
    return model


def rest_hook(server: KbundleRESTServer) -> None:
    """GET /v2/models/{m}/config and a null-free GET /v2/models/{m}, ahead of kserve's routes."""
    from kserve.model_server import app

    register_rest_routes(app, server.dataplane.model_registry)


def register_rest_routes(app: FastAPI, registry) -> None:
    async def config(model_name: str) -> Response:
        return json_response(model_config(_served(registry, model_name)))

    async def config_version(model_name: str, model_version: str) -> Response:
        return await config(model_name)

    async def metadata(model_name: str) -> Response:
        return json_response(model_metadata(_served(registry, model_name)))

    app.add_api_route("/v2/models/{model_name}/config", config, methods=["GET"])
    app.add_api_route(
        "/v2/models/{model_name}/versions/{model_version}/config",
        config_version,
        methods=["GET"],
        include_in_schema=False,
    )
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])


def grpc_hook(server: KbundleGRPCServer) -> Sequence[grpc.GenericRpcHandler]:
    """`inference.GRPCInferenceService/ModelConfig` with tritonclient's ModelConfig message."""
    from google.protobuf import json_format

    from kbundle.predictors.triton_pb import model_config_pb2, rpc_messages

    config_message = model_config_pb2().ModelConfig
    request_type, response_type = rpc_messages()
    registry = server._data_plane.model_registry

    async def model_config_rpc(request, context):
        model = _served(registry, request.name)
        return response_type(config=json_format.ParseDict(model_config(model), config_message()))

    handler = grpc.unary_unary_rpc_method_handler(
        model_config_rpc,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )
    return [grpc.method_handlers_generic_handler(SERVICE, {"ModelConfig": handler})]
