"""ServingRuntime selection as KServe's controller does it, the shipped runtimes, and the short form
through `kbundle validate` and `kbundle up --runtimes`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from procs import free_port, wait_http

from kbundle import samples
from kbundle.manifests import crds as crd_source
from kbundle.manifests.runtimes import (
    RuntimeResolutionError,
    load_runtimes,
    model_request,
    resolve,
    runtimes_in,
    with_runtime,
)

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = REPO / "inferenceservices" / "runtimes"
SHORT = REPO / "inferenceservices" / "digits-short.yaml"


def crd_dir() -> Path:
    """Packaged CRDs when the package has them, else ../shared/kserve-crds (KBUNDLE_TEST_CRDS wins)."""
    packaged = Path(crd_source.__file__).parent / "crds" / "kserve"
    for candidate in (os.environ.get("KBUNDLE_TEST_CRDS"), packaged, crd_source.repo_default_dir()):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.skip("no KServe CRDs (packaged or ../shared/kserve-crds)")


def runtime(name, formats, protocols=("v2", "grpc-v2"), kind="ClusterServingRuntime", **spec):
    return {
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"supportedModelFormats": formats, "protocolVersions": list(protocols), **spec},
    }


def isvc(fmt="onnx", version=None, runtime_name=None, protocol="v2"):
    model = {"modelFormat": {"name": fmt, **({"version": version} if version else {})}}
    if runtime_name:
        model["runtime"] = runtime_name
    if protocol:
        model["protocolVersion"] = protocol
    return {
        "kind": "InferenceService",
        "metadata": {"name": "m"},
        "spec": {"predictor": {"model": model}},
    }


def pick(service, *objects):
    return resolve(model_request(service), runtimes_in(objects)).name


ONNX_AUTO = {"name": "onnx", "version": "1", "autoSelect": True}


def test_highest_priority_autoselect_runtime_wins():
    low = runtime("low", [{**ONNX_AUTO, "priority": 1}])
    high = runtime("high", [{**ONNX_AUTO, "priority": 2}])
    unset = runtime("unset", [ONNX_AUTO])
    assert pick(isvc(), low, unset, high) == "high"
    assert pick(isvc(), unset, low) == "low"  # a priority beats none


def test_namespaced_runtimes_come_before_cluster_runtimes():
    cluster = runtime("cluster", [{**ONNX_AUTO, "priority": 9}])
    local = runtime("local", [ONNX_AUTO], kind="ServingRuntime")
    assert pick(isvc(), cluster, local) == "local"


def test_autoselect_false_only_by_name():
    manual = runtime("manual", [{"name": "onnx", "version": "1"}])
    with pytest.raises(RuntimeResolutionError) as err:
        pick(isvc(), manual)
    assert err.value.path == ("spec", "predictor", "model", "modelFormat")
    assert "no runtime supports model format onnx over protocol v2" in err.value.message
    assert pick(isvc(runtime_name="manual"), manual) == "manual"


def test_version_must_match_exactly_and_protocol_must_be_served():
    rt = runtime("rt", [ONNX_AUTO])
    assert pick(isvc(version="1"), rt) == "rt"
    with pytest.raises(RuntimeResolutionError) as err:
        pick(isvc(version="2"), rt)
    assert err.value.path[-1] == "modelFormat"
    # KServe's default protocol is v1; a runtime without protocolVersions serves v1 only.
    with pytest.raises(RuntimeResolutionError) as err:
        pick(isvc(protocol=None), rt)
    assert err.value.path[-1] == "protocolVersion" and "protocol v1" in err.value.message
    assert pick(isvc(protocol=None), runtime("v1only", [ONNX_AUTO], protocols=())) == "v1only"


def test_disabled_and_unknown_runtimes_are_errors_naming_runtime():
    off = runtime("off", [ONNX_AUTO], disabled=True)
    for name, text in (("off", "disabled"), ("nope", "no ServingRuntime named 'nope'")):
        with pytest.raises(RuntimeResolutionError) as err:
            pick(isvc(runtime_name=name), off)
        assert err.value.path[-1] == "runtime" and text in err.value.message
    with pytest.raises(RuntimeResolutionError):
        pick(isvc(), off)


def test_shipped_runtimes_pick_their_formats():
    shipped = load_runtimes(RUNTIMES)
    assert {rt.name for rt in shipped} == {"kbundle-onnx", "kbundle-pytorch", "kbundle-tensorrt"}
    for fmt, version, name in (
        ("onnx", "1", "kbundle-onnx"),
        ("pytorch", "2", "kbundle-pytorch"),
        ("tensorrt", "10", "kbundle-tensorrt"),
    ):
        for protocol in ("v2", "grpc-v2"):
            assert (
                resolve(model_request(isvc(fmt, version, protocol=protocol)), shipped).name == name
            )


def test_shipped_runtimes_are_hardened_and_gpu_requests_equal_limits():
    for path in sorted(RUNTIMES.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        (container,) = spec["containers"]
        assert container["image"].startswith("ghcr.io/kbundle/predictor-"), path.name
        assert "--model_name={{.Name}}" in container["args"], path.name
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == 1000 and sc["readOnlyRootFilesystem"]
        assert not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert resources["requests"] and resources["limits"], path.name
        if "nvidia.com/gpu" in resources["limits"]:
            assert resources["requests"] == resources["limits"], path.name


def test_with_runtime_fills_name_and_lets_the_model_override_env():
    rt = runtime(
        "rt",
        [ONNX_AUTO],
        containers=[
            {
                "args": ["--model_name={{.Name}}", "--x=1"],
                "env": [{"name": "A", "value": "rt"}, {"name": "B", "value": "rt"}],
            }
        ],
    )
    service = isvc()
    service["spec"]["predictor"]["model"]["args"] = ["--y=2"]
    service["spec"]["predictor"]["model"]["env"] = [{"name": "B", "value": "model"}]
    model = with_runtime(service, runtimes_in([rt]))["spec"]["predictor"]["model"]
    assert model["args"] == ["--model_name=m", "--x=1", "--y=2"]
    assert {e["name"]: e["value"] for e in model["env"]} == {"A": "rt", "B": "model"}


def _validate(*paths) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "kbundle.cli",
        "validate",
        *map(str, paths),
        "--crd",
        str(crd_dir()),
        "--no-cluster",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_validate_passes_the_runtimes_and_the_short_form_sample(tmp_path):
    shutil.copytree(REPO / "inferenceservices", tmp_path / "isvc")
    result = _validate(tmp_path / "isvc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s)" in result.stdout


def test_validate_names_the_field_when_no_runtime_supports_the_format(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHORT.read_text().replace("name: onnx", "name: xgboost"))
    result = _validate(RUNTIMES, bad)
    assert result.returncode == 1, result.stdout
    assert (
        "error [InferenceService/digits-short] spec.predictor.model.modelFormat: no runtime "
        "supports model format xgboost version 1 over protocol v2" in result.stdout
    )


def test_up_serves_the_short_form_sample_with_the_runtime_args_and_env(tmp_path):
    samples.build_all()
    manifest = tmp_path / "digits-short.yaml"
    shutil.copy(SHORT, manifest)
    # The runtime's env reaches the predictor: a model version set there comes back in responses.
    runtimes = tmp_path / "runtimes"
    shutil.copytree(RUNTIMES, runtimes)
    onnx = runtimes / "kbundle-onnx.yaml"
    onnx.write_text(
        onnx.read_text().replace(
            "      env:\n",
            "      env:\n        - name: KBUNDLE_MODEL_VERSION\n          value: from-runtime\n",
            1,
        )
    )
    port, grpc_port = free_port(), free_port()
    log = tmp_path / "up.log"
    cmd = [
        sys.executable,
        "-m",
        "kbundle.cli",
        "up",
        str(manifest),
        "--runtimes",
        str(runtimes),
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/digits-short/ready", proc, log, timeout=120)
        _, test = samples.digits_split()
        rows = test.images[:32].reshape(32, 64).astype(np.float32)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        features = httpclient.InferInput("input", list(rows.shape), "FP32")
        features.set_data_from_numpy(rows)
        result = client.infer("digits-short", [features])
        assert np.mean(result.as_numpy("label").reshape(-1) == test.labels[:32]) >= 0.8
        assert result.get_response()["model_version"] == "from-runtime"
    finally:
        proc.terminate()
        proc.wait(30)
