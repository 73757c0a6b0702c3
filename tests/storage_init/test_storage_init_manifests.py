"""The ClusterStorageContainer against KServe's CRD schema, and the image's hardening rules."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from kbundle.manifests import crds
from kbundle.storage_init import uris

ROOT = Path(__file__).resolve().parents[2]
CSC = ROOT / "inferenceservices" / "clusterstoragecontainer.yaml"
CRD = crds.packaged_dir("kserve") / "serving.kserve.io_clusterstoragecontainers.yaml"
DOCKERFILE = ROOT / "docker" / "storage-init.Dockerfile"


@pytest.fixture(scope="module")
def csc() -> dict:
    return yaml.safe_load(CSC.read_text())


def test_csc_validates_against_the_kserve_crd(csc: dict) -> None:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    assert csc["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert csc["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(csc, version["schema"]["openAPIV3Schema"])


def test_csc_container_is_locked_down(csc: dict) -> None:
    sc = csc["spec"]["container"]["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 1000
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/model",
        "gs://bucket/model",
        "hf://org/model",
        "https://acct.blob.core.windows.net/c/model",
        "https://example.com/models/digits.tar.gz",
    ],
)
def test_every_uri_the_csc_claims_is_handled(csc: dict, uri: str) -> None:
    formats = csc["spec"]["supportedUriFormats"]
    claimed = any(
        ("prefix" in f and uri.startswith(f["prefix"]))
        or ("regex" in f and re.search(f["regex"], uri))
        for f in formats
    )
    assert claimed
    assert uris.parse_source(uri).kind in ("delegated", "http", "s3")


def test_dockerfile_final_stage_is_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    final = text.split("\nFROM ")[-1]  # the last stage
    assert "build-essential" not in final and "gcc" not in final
    assert "USER 1000" in final
    assert 'ENTRYPOINT ["python", "-m", "kbundle.storage_init"]' in final
    assert text.count("\nFROM ") >= 2
