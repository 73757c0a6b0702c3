"""Session-wide fixtures: the sample model repository, built once (cached across runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# kserve and tritonclient each register the V2 `inference.*` protos in protobuf's default pool, and
# one process can hold only one copy. Triton's grpc_service.proto is a superset of kserve's
# grpc_predict_v2.proto (same package, names and field numbers), so in the *test* process kserve's
# module is served by tritonclient's. Servers under test run in their own processes, untouched.
import tritonclient.grpc.service_pb2 as _triton_service_pb2  # noqa: E402

sys.modules.setdefault("kserve.protocol.grpc.grpc_predict_v2_pb2", _triton_service_pb2)

from kbundle import samples  # noqa: E402

# `--workers auto` (the predictor's default) starts one front end per CPU; the suite tests the
# single process unless a test asks for workers (tests/predictors/test_workers*.py pass --workers).
os.environ.setdefault("KBUNDLE_WORKERS", "1")


@pytest.fixture(scope="session")
def sample_models() -> Path:
    """The built sample models dir (`<dir>/digits/v1`, `<dir>/digits/v2`, ...)."""
    return samples.build_all()


@pytest.fixture(scope="session")
def digits_v1(sample_models: Path) -> Path:
    return sample_models / "digits" / "v1"
