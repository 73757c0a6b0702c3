"""The gRPC V2 hop: one long-lived grpc.aio channel, raw tensor contents both ways."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import grpc
import numpy as np
from grpc import aio
from kbundle.transformers.hop import Hop, HopConfig, PredictorError, checked_decode, forwardable
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from kbundle.errors import InvalidRequest, KbundleError, ModelUnavailable, UpstreamTimeout
from kbundle.serving.v2_grpc import CONTENTS_FIELD
from kbundle.specs import v2_datatype
from kbundle.tensors import array_from_list, array_from_raw, raw_from_array

GRPC_TO_HTTP: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


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

    async def infer(
        self,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        headers: Mapping[str, str],
    ) -> dict[str, np.ndarray]:
        stub = self._connect()
        message = pb.ModelInferRequest(model_name=self.config.model_name, id=request_id)
        for name, array in inputs.items():
            message.inputs.add(
                name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape)
            )
            message.raw_input_contents.append(raw_from_array(array))
        for name in outputs:
            message.outputs.add(name=name)
        metadata = tuple(forwardable(headers).items())

        async def call() -> pb.ModelInferResponse:
            return await stub.ModelInfer(message, timeout=self.config.timeout_s, metadata=metadata)

        try:
            response = await self._with_retries(
                call,
                lambda e: (
                    isinstance(e, aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
                ),
            )
        except aio.AioRpcError as exc:
            raise self._error(exc) from None
        self.model_version = response.model_version
        return checked_decode(self.config.where, lambda: _grpc_outputs(self.config.where, response))

    def _error(self, exc: aio.AioRpcError) -> KbundleError:
        code, details = exc.code(), exc.details() or exc.code().name
        if code == grpc.StatusCode.UNAVAILABLE:
            return ModelUnavailable(f"{self.config.where} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UpstreamTimeout(
                f"{self.config.where} did not answer within {self.config.timeout_s:g} s"
            )
        status = GRPC_TO_HTTP.get(code, HTTPStatus.BAD_GATEWAY)
        if status == HTTPStatus.BAD_REQUEST:
            return InvalidRequest(f"{self.config.where}: {details}")
        return PredictorError(
            f"{self.config.where}: {details}",
            status,
            code if status != HTTPStatus.BAD_GATEWAY else grpc.StatusCode.INTERNAL,
        )

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
