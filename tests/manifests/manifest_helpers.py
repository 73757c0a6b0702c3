"""Shared helpers and fixtures for the manifest tests (imported by name: test files import the
fixtures they use, so no conftest.py name clashes with other test folders)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pristine import committed

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "src" / "kbundle" / "manifests" / "crds" / "kserve"
MONITORING_CRD_DIR = CRD_DIR.parent / "monitoring"
SAMPLES = committed("inferenceservices")  # HEAD's copy: a user's canary edits never reach a test
FIXTURES = Path(__file__).parent / "fixtures"

BASE_ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "digits", "annotations": {"serving.kserve.io/deploymentMode": "Knative"}},
    "spec": {
        "predictor": {
            "minReplicas": 1,
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "ghcr.io/kbundle/predictor-cpu:0.1.0",
                    "args": ["--model_name", "digits", "--model_dir", "/mnt/models"],
                    "env": [{"name": "STORAGE_URI", "value": "s3://kbundle-models/digits/v1"}],
                }
            ],
        },
        "transformer": {
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "ghcr.io/kbundle/transformer:0.1.0",
                    "args": [
                        "--model_name",
                        "digits",
                        "--predictor_protocol",
                        "v2",
                        "--workers",
                        "1",
                    ],
                }
            ]
        },
    },
}


@pytest.fixture(scope="session")
def crds():
    """The packaged KServe and Prometheus Operator CRDs (a missing file fails the test)."""
    from kbundle.manifests.crds import load_packaged

    return load_packaged()


@pytest.fixture
def base_isvc() -> dict:
    return copy.deepcopy(BASE_ISVC)


def run_cli(
    *args: str, cwd: Path | None = None, env_extra: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`kbundle ARGS` as a real subprocess (same interpreter as the tests)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "kbundle.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
        **kwargs,
    )
