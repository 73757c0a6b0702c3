"""The stock KServe way: a plain custom kserve.Model calling ONNX Runtime per request.

Follows KServe's custom-model sample (docs/samples/v1beta1/custom/custom_model): `load()` opens
the session, a sync `predict()` turns the V2 InferRequest into numpy, runs the session and builds
an InferResponse; `ModelServer().start([model])` serves it with all of kserve's defaults.

Shim, off the hot path, so perf_analyzer can talk to it at all: stock kserve has no Triton
model-configuration extension, and perf_analyzer stops without it. We add GET
/v2/models/{m}/config and the gRPC ModelConfig RPC (answered from the ONNX signature, no
batching). Nothing on the infer path is changed.

    python bench/stock_kserve.py --model_name mlp --model_dir DIR --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse

import grpc
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.protocol.grpc import server as grpc_server_module
from kserve.utils.utils import generate_uuid

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}


def _metadata(arg) -> dict:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": ORT_TYPES[arg.type][5:], "shape": shape}


class OnnxModel(Model):
    def __init__(self, name: str, model_path: str, threads: int):
        super().__init__(name)
        self.model_path = model_path
        self.threads = threads
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(
            self.model_path, options, providers=["CPUExecutionProvider"]
        )
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        outputs = self.session.run(None, feeds)
        infer_outputs = []
        for meta, array in zip(self.session.get_outputs(), outputs, strict=True):
            out = InferOutput(name=meta.name, shape=list(array.shape), datatype="FP32")
            out.set_data_from_numpy(array, binary_data=payload.use_binary_outputs)
            infer_outputs.append(out)
        return InferResponse(
            model_name=self.name,
            infer_outputs=infer_outputs,
            response_id=payload.id or generate_uuid(),
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs or None,
        )

    # -- metadata (kserve's documented hooks; perf_analyzer reads them) -----------------------
    def get_input_types(self) -> list[dict]:
        return [_metadata(a) for a in self.session.get_inputs()]

    def get_output_types(self) -> list[dict]:
        return [_metadata(a) for a in self.session.get_outputs()]

    # -- shim: Triton model config, for perf_analyzer only ---------------------------------------
    def triton_config(self) -> dict:
        def tensor(arg) -> dict:
            dims = [d if isinstance(d, int) else -1 for d in arg.shape]
            return {"name": arg.name, "data_type": ORT_TYPES[arg.type], "dims": dims}

        return {
            "name": self.name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 0,
            "input": [tensor(a) for a in self.session.get_inputs()],
            "output": [tensor(a) for a in self.session.get_outputs()],
        }


def add_config_shim(model: OnnxModel) -> None:
    from google.protobuf import json_format
    from kserve.model_server import app

    # tritonclient.grpc cannot be imported beside kserve (duplicate protobuf symbols).
    from kbundle.predictors.triton_pb import model_config_pb2, rpc_messages

    request_type, response_type = rpc_messages()

    @app.get("/v2/models/{model_name}/config")
    async def config(model_name: str) -> dict:
        return model.triton_config()

    async def rpc(request, context):
        message = json_format.ParseDict(model.triton_config(), model_config_pb2().ModelConfig())
        return response_type(config=message)

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelConfig": grpc.unary_unary_rpc_method_handler(
                rpc,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        },
    )
    real_server = grpc_server_module.aio.server

    def server_with_config(*args, **kwargs):
        server = real_server(*args, **kwargs)
        server.add_generic_rpc_handlers((handler,))
        return server

    grpc_server_module.aio.server = server_with_config


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--intra_op_threads", type=int, default=1)
    args, _ = parser.parse_known_args()
    onnx_model = OnnxModel(args.model_name, f"{args.model_dir}/model.onnx", args.intra_op_threads)
    add_config_shim(onnx_model)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([onnx_model])
