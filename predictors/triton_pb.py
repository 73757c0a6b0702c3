"""Triton's ModelConfig protobuf messages, loaded beside kserve's V2 protos in one process.

`import tritonclient.grpc` registers Triton's grpc_service.proto, whose messages have the same
full names as kserve's grpc_predict_v2.proto (`inference.ServerLiveRequest`, ...): protobuf then
refuses to load the second. So we load only tritonclient's model_config_pb2 file (no clash) and
declare the two RPC messages ModelConfigRequest/Response ourselves: same fields and numbers as
Triton's, hence the same wire format, under our own package name.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from types import ModuleType

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

RPC_FILE = "kbundle/triton_model_config_rpc.proto"


@cache
def model_config_pb2() -> ModuleType:
    """tritonclient's model_config_pb2 (ModelConfig, ModelInput, ...), without its package init."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tritonclient is not installed (pip install 'tritonclient[grpc]')")
    path = os.path.join(spec.submodule_search_locations[0], "grpc", "model_config_pb2.py")
    file_spec = importlib.util.spec_from_file_location("kbundle_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


@cache
def rpc_messages() -> tuple[type, type]:
    """(ModelConfigRequest, ModelConfigResponse) with Triton's field numbers."""
    config_file = model_config_pb2().DESCRIPTOR.name
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name=RPC_FILE, package="kbundle.triton", dependency=[config_file], syntax="proto3"
    )
    request = proto.message_type.add(name="ModelConfigRequest")
    request.field.add(name="name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    request.field.add(name="version", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="ModelConfigResponse")
    response.field.add(
        name="config",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".inference.ModelConfig",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.Default()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([RPC_FILE], pool)
    return classes["kbundle.triton.ModelConfigRequest"], classes[
        "kbundle.triton.ModelConfigResponse"
    ]
