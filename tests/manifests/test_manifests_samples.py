"""Every file in inferenceservices/ passes `kbundle validate` against the real KServe CRDs, and the
command's exit codes and output format hold (run as a real subprocess)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from manifest_helpers import BASE_ISVC, CRD_DIR, FIXTURES, SAMPLES, run_cli

SAMPLE_FILES = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".yaml", ".yml"))


def test_samples_exist():
    names = {p.name for p in SAMPLE_FILES}
    assert {
        "digits.yaml",
        "digits-gpu.yaml",
        "digits-canary.yaml",
        "digits-canary-standard.yaml",
    } <= names


def test_every_sample_validates_clean():
    result = run_cli(
        "validate",
        "--crd",
        str(CRD_DIR),
        "--json",
        *map(str, SAMPLE_FILES),
        str(SAMPLES / "runtimes"),  # the short-form sample's ServingRuntimes
        str(FIXTURES),
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["findings"] == []  # neither errors nor lint warnings
    assert len(report["checked"]) >= len(SAMPLE_FILES)


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.name)
def test_samples_are_hardened(sample):
    """Non-root, read-only root FS, all capabilities dropped, no privilege escalation everywhere."""
    for doc in yaml.safe_load_all(sample.read_text()):
        spec = doc.get("spec") or {}
        units = [spec.get(k) for k in ("predictor", "transformer")] + [
            c["predictor"] for c in spec.get("canary", [])
        ]
        containers = [c for u in units if u for c in u.get("containers", [])] + (
            [spec["container"]] if "container" in spec else []
        )
        if any(u and "model" in u for u in units):  # short form: a ServingRuntime's container
            runtimes = sorted((SAMPLES / "runtimes").glob("*.yaml"))
            containers += [
                c for f in runtimes for c in yaml.safe_load(f.read_text())["spec"]["containers"]
            ]
        assert containers, f"{sample.name}: no containers found"
        for c in containers:
            sc = c.get("securityContext") or {}
            assert sc.get("runAsNonRoot") is True, c["name"]
            assert sc.get("readOnlyRootFilesystem") is True, c["name"]
            assert sc.get("allowPrivilegeEscalation") is False, c["name"]
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]


def test_gpu_sample_has_the_cold_start_settings():
    doc = yaml.safe_load((SAMPLES / "digits-gpu.yaml").read_text())
    pred = doc["spec"]["predictor"]
    main = pred["containers"][0]
    assert (
        pred["minReplicas"] == 0
        and pred["scaleMetric"] == "concurrency"
        and pred["containerConcurrency"]
    )
    assert (
        main["resources"]["requests"]["nvidia.com/gpu"]
        == main["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert "startupProbe" in main and pred["tolerations"] and pred["nodeSelector"]
    assert "serving.knative.dev/progress-deadline" in doc["metadata"]["annotations"]
    assert {
        "autoscaling.knative.dev/initial-scale",
        "autoscaling.knative.dev/scale-down-delay",
    } <= set(pred["annotations"])
    args = doc["spec"]["transformer"]["containers"][0]["args"]
    assert args[args.index("--predictor_protocol") + 1] == "grpc-v2"


def test_errors_exit_1_with_file_line_and_path(tmp_path):
    bad = dict(
        BASE_ISVC,
        spec={
            **BASE_ISVC["spec"],
            "predictor": {**BASE_ISVC["spec"]["predictor"], "minReplicas": -1},
        },
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    result = run_cli("validate", "--crd", str(CRD_DIR), str(path))
    assert result.returncode == 1
    line = next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if "minReplicas" in text
    )
    assert (
        f"{path}:{line}: error [InferenceService/digits] spec.predictor.minReplicas: 'MinReplicas' "
        "cannot be less than 0 (webhook/replicas)" in result.stdout
    )
    assert "1 error(s), 0 warning(s)" in result.stdout


def test_warnings_only_exit_0(tmp_path):
    warn = json.loads(json.dumps(BASE_ISVC))
    warn["spec"]["predictor"]["containers"][0]["image"] = "ghcr.io/kbundle/predictor-cpu:latest"
    path = tmp_path / "warn.yaml"
    path.write_text(yaml.safe_dump(warn, sort_keys=False))
    result = run_cli("validate", "--crd", str(CRD_DIR), str(path))
    assert result.returncode == 0, result.stdout
    assert "warning [InferenceService/digits] spec.predictor.containers[0].image:" in result.stdout
    assert "(lint/image-tag)" in result.stdout


def test_missing_crds_is_a_clear_error(tmp_path):
    result = run_cli("validate", "--crd", str(tmp_path / "nope"), str(SAMPLE_FILES[0]))
    assert result.returncode == 2 and "no such CRD file or folder" in result.stderr


def _fake_kubectl(tmp_path, exit_code: int):
    """A stand-in `kubectl` (no cluster can run here): answers `get crd -o json` with the real
    CRDs as a List, the way a cluster with KServe installed would, and logs its arguments."""
    from kbundle.manifests.crds import read_documents

    items = [d for f in sorted(CRD_DIR.glob("*.yaml")) for d in read_documents(f)]
    (tmp_path / "crds.json").write_text(json.dumps({"kind": "List", "items": items}))
    script = tmp_path / "bin" / "kubectl"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/kubectl.log\n'
        f'[ "$1 $2" = "get crd" ] || exit 2\n'
        + (f"cat {tmp_path}/crds.json\n" if exit_code == 0 else "echo 'connection refused' >&2\n")
        + f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{script.parent}:{os.environ['PATH']}"}


def test_crds_come_from_the_cluster_when_reachable(tmp_path):
    env = _fake_kubectl(tmp_path, 0)
    result = run_cli("validate", str(SAMPLES / "digits.yaml"), env_extra=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked against cluster (kubectl get crd)" in result.stdout
    assert (tmp_path / "kubectl.log").read_text().startswith("get crd -o json")


def test_unreachable_cluster_falls_back_to_the_packaged_crds(tmp_path):
    env = _fake_kubectl(tmp_path, 1)
    result = run_cli("validate", str(SAMPLES / "digits.yaml"), env_extra=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked against packaged kserve CRDs" in result.stdout
    skipped = run_cli("validate", "--no-cluster", str(SAMPLES / "digits.yaml"), env_extra=env)
    assert skipped.returncode == 0
    assert (tmp_path / "kubectl.log").read_text().count("get crd") == 1  # --no-cluster never asked


@pytest.mark.parametrize("extra", [[], ["--no-lint"]], ids=["lint", "no-lint"])
def test_gpu_request_without_limit_is_an_error_exit_1(tmp_path, extra):
    """The API server rejects such a pod, so validate fails even with --no-lint."""
    gpu = json.loads(json.dumps(BASE_ISVC))
    gpu["spec"]["predictor"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(gpu, sort_keys=False))
    result = run_cli("validate", "--no-cluster", *extra, str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error [InferenceService/digits] spec.predictor.containers[0].resources.limits" in (
        result.stdout
    )
    assert "without a limit" in result.stdout and "(pod/gpu-limits)" in result.stdout
