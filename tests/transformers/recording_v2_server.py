"""A stand-in predictor for the hop tests: our real V2 server (REST + gRPC) serving a model with
the digits signature that appends the headers of every request to a JSON-lines file, with the
seconds left before the request's deadline as the server read it (`budget_s`, null: none).

It answers like the digits model (label 7 for every row) and, to exercise error forwarding,
refuses `authorization: Bearer invalid` with a 400 and `Bearer denied` with a 403 (and answers
`Bearer slow` late) — the
statuses a real predictor behind an auth proxy or with a stricter signature would send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np
from kserve import Model, model_server

from kbundle.errors import InvalidRequest, KBundleError, Status
from kbundle.serving.arrays import ArrayRequest, ArrayResponse
from kbundle.serving.server import KbundleModelServer
from kbundle.specs import Signature, TensorSpec
from kbundle.validation import SignatureValidator

SIGNATURE = Signature.of(
    [TensorSpec("input", "FP32", (-1, 64))],
    [TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 10))],
)


SLOW_S = 4.0  # `authorization: Bearer slow` answers after this long (timeout tests)


class Denied(KBundleError):
    status = Status.PERMISSION_DENIED


class RecordingModel(Model):
    def __init__(self, name: str, record: str):
        super().__init__(name)
        self.record = record
        self._validator = SignatureValidator(name, SIGNATURE)
        self.ready = True

    @property
    def validator(self) -> SignatureValidator:
        return self._validator

    @property
    def signature(self) -> Signature:
        return SIGNATURE

    async def infer_arrays(self, request: ArrayRequest) -> ArrayResponse:
        with open(self.record, "a") as out:
            budget = None if request.deadline is None else request.deadline - time.monotonic()
            entry = {"id": request.id, "headers": request.headers, "budget_s": budget}
            out.write(json.dumps(entry) + "\n")
        auth = request.headers.get("authorization", "")
        if auth == "Bearer invalid":
            raise InvalidRequest(
                f"model '{self.name}' input 'input': refused by the recording predictor"
            )
        if auth == "Bearer slow":
            await asyncio.sleep(SLOW_S)
        if auth == "Bearer denied":
            raise Denied(f"model '{self.name}': token not allowed")
        rows = request.inputs["input"].shape[0]
        probabilities = np.zeros((rows, 10), np.float32)
        probabilities[:, 7] = 1.0
        return ArrayResponse(
            outputs={"label": np.full(rows, 7, np.int64), "probabilities": probabilities}
        )


def main() -> int:
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    KbundleModelServer(args).start([RecordingModel(args.model_name, args.record)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
