"""The gRPC V2 hop: one long-lived grpc.aio channel, raw tensor contents both ways."""

from __future__ import annotations

import grpc
import numpy as np
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from kbundle.errors import KBundleError
from kbundle.serving.v2_grpc import CONTENTS_FIELD
from kbundle.specs import v2_datatype
from kbundle.status import from_grpc
from kbundle.tensors import array_from_list, array_from_raw, raw_from_array
from kbundle.transformers.hop import (
    Hop,
    HopConfig,
    HopRequest,
    checked_decode,
    upstream_error,
)


def grpc_target(host: str, use_ssl: bool) -> str:
    """`host:port`, with :80 (:443 with TLS) added when no port is given, as kserve does: the
    controller passes `--predictor_host <isvc>-predictor.<ns>`, and gRPC alone would pick 443."""
    bare = host.rsplit("]", 1)[-1]  # an IPv6 literal's colons are inside the brackets
    if ":" in bare:
        return host
    return f"{host}:{443 if use_ssl else 80}"


class GrpcHop(Hop):
    def __init__(self, config: HopConfig):
        super().__init__(config)
        self._channel: aio.Channel | None = None
        self._stub: GRPCInferenceServiceStub | None = None

    def _connect(self) -> GRPCInferenceServiceStub:
        # Created lazily: a grpc.aio channel belongs to the event loop it was created on.
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                # Reconnect quickly after a predictor restart (the default backoff starts at 1 s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            target = grpc_target(self.config.host, self.config.use_ssl)
            if self.config.use_ssl:
                credentials = grpc.ssl_channel_credentials()
                self._channel = aio.secure_channel(target, credentials, options)
            else:
                self._channel = aio.insecure_channel(target, options)
            self._stub = GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def _send(self, request: HopRequest) -> dict[str, np.ndarray]:
        budget = self.budget_s(request)
        stub = self._connect()
        message = pb.ModelInferRequest(model_name=self.config.model_name, id=request.request_id)
        for name, array in request.inputs.items():
            message.inputs.add(
                name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape)
            )
            message.raw_input_contents.append(raw_from_array(array))
        for name in request.outputs:
            message.outputs.add(name=name)
        metadata = tuple(request.headers.items())

        async def call() -> pb.ModelInferResponse:
            # The gRPC deadline travels with the call: the predictor drops it unrun at expiry.
            left = self.budget_s(request)  # less on each retry: the deadline does not move
            return await stub.ModelInfer(message, timeout=left, metadata=metadata)

        try:
            response = await self._with_retries(
                call,
                lambda e: (
                    isinstance(e, aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
                ),
            )
        except aio.AioRpcError as exc:
            raise self._error(exc, budget) from None
        self.model_version = response.model_version
        return checked_decode(self.config.where, lambda: _grpc_outputs(self.config.where, response))

    def _error(self, exc: aio.AioRpcError, budget: float) -> KBundleError:
        code = exc.code()
        status = from_grpc(code)
        return upstream_error(self.config.where, status, exc.details() or code.name, budget)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


def _grpc_outputs(where: str, response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = response.raw_output_contents
    out = {}
    for index, tensor in enumerate(response.outputs):
        name = f"{where} output '{tensor.name}'"
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            out[tensor.name] = array_from_raw(name, tensor.datatype, shape, raw[index])
        else:
            field = CONTENTS_FIELD[tensor.datatype]
            out[tensor.name] = array_from_list(
                name, tensor.datatype, shape, list(getattr(tensor.contents, field))
            )
    return out
