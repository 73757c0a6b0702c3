"""Helpers for the predictor lifecycle tests: a slow predictor, raw gRPC and REST calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.service_pb2 as pb
from procs import ServerProcess, start_predictor
from slow_model import WIDTH, build_slow_model, request_rows

MODEL = "slow"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def start_slow(
    tmp_path: Path, *flags: str, env: dict | None = None, max_batch_size: int = 64
) -> ServerProcess:
    """The slow model with one 64-row request per batch, so requests queue in the batcher."""
    model_dir = build_slow_model(tmp_path / "slow", f"max_batch_size: {max_batch_size}\n")
    return start_predictor(MODEL, model_dir, tmp_path / "predictor.log", *flags, env=env)


def infer_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        METHOD,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def grpc_message(tag: int, rows: int = 64) -> pb.ModelInferRequest:
    x = request_rows(tag, rows)
    message = pb.ModelInferRequest(model_name=MODEL, id=str(tag))
    message.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    return message


def grpc_rows(response: pb.ModelInferResponse) -> np.ndarray:
    (tensor,) = response.outputs
    shape = tuple(int(d) for d in tensor.shape)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(shape)


def rest_infer(
    http_url: str, tag: int, timeout: float = 60, rows: int = 64
) -> tuple[int, np.ndarray | str]:
    """One binary-extension V2 call: (200, rows) or (status, error message)."""
    x = request_rows(tag, rows)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/{MODEL}/infer",
        data=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body, length = resp.read(), int(resp.headers["Inference-Header-Content-Length"])
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]
    header = json.loads(body[:length])
    shape = tuple(header["outputs"][0]["shape"])
    return 200, np.frombuffer(body[length:], dtype=np.float32).reshape(shape)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def expected_rows(tag: int, rows: int = 64) -> np.ndarray:
    return np.full((rows, WIDTH), float(tag), dtype=np.float32)
