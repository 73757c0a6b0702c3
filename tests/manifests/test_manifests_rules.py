"""Each validation rule has a failing example: schema, KServe webhook rules and kbundle lint.

Objects are written to real files and checked against the real KServe CRDs; each case asserts
the rule, the severity, the field path and the message.
"""

from __future__ import annotations

from pathlib import Path

import manifest_helpers
import pytest
import yaml
from manifest_helpers import BASE_ISVC, FIXTURES

from kbundle.manifests.check import validate_paths

# Fixtures from the shared helper module (assigned, so function arguments may shadow them).
crds, base_isvc = manifest_helpers.crds, manifest_helpers.base_isvc


def _pred(o):
    return o["spec"]["predictor"]


def _pc(o):
    return o["spec"]["predictor"]["containers"][0]


def _tc(o):
    return o["spec"]["transformer"]["containers"][0]


def _standard(o):
    o["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"


def _gpu(o, requests="1", limits="1"):
    _pc(o)["resources"] = {
        "requests": {"nvidia.com/gpu": requests},
        "limits": {"nvidia.com/gpu": limits},
    }


def _canary_list(o, entries):
    _standard(o)
    o["spec"]["canary"] = entries


def _canary(name, percent, **extra):
    predictor = {
        "name": name,
        "containers": [dict(BASE_ISVC["spec"]["predictor"]["containers"][0])],
        **extra,
    }
    return {"trafficPercent": percent, "predictor": predictor}


# (case id, mutation, rule, severity, path, message fragment)
CASES = [
    (
        "unknown-field",
        lambda o: _pred(o).update(minReplica=1),
        "schema",
        "error",
        "spec.predictor.minReplica",
        'unknown field "minReplica"',
    ),
    (
        "wrong-type",
        lambda o: _pred(o).update(minReplicas="zero"),
        "schema",
        "error",
        "spec.predictor.minReplicas",
        "must be of type integer",
    ),
    (
        "enum",
        lambda o: _pred(o).update(scaleMetric="gpu"),
        "schema",
        "error",
        "spec.predictor.scaleMetric",
        'Unsupported value: "gpu"',
    ),
    (
        "required",
        lambda o: o["spec"].pop("predictor"),
        "schema",
        "error",
        "spec.predictor",
        "Required value",
    ),
    (
        "metadata-unknown",
        lambda o: o["metadata"].update(annotation={}),
        "schema",
        "error",
        "metadata.annotation",
        'unknown field "annotation"',
    ),
    (
        "yaml-1.1-boolean",
        lambda o: _pc(o)["env"].append({"name": "ENABLE", "value": True}),
        "schema",
        "error",
        "spec.predictor.containers[0].env[1].value",
        "got boolean true (quote it",
    ),
    (
        "annotation-not-string",
        lambda o: o["metadata"]["annotations"].update(x=True),
        "schema",
        "error",
        "metadata.annotations.x",
        "must be of type string",
    ),
    (
        "quantity",
        lambda o: _pc(o).update(resources={"limits": {"cpu": "two"}}),
        "schema",
        "error",
        "spec.predictor.containers[0].resources.limits.cpu",
        "must be a quantity",
    ),
    (
        "int-or-string",
        lambda o: _pc(o).update(readinessProbe={"httpGet": {"port": 1.5}}),
        "schema",
        "error",
        "spec.predictor.containers[0].readinessProbe.httpGet.port",
        "must be of type integer or string",
    ),
    (
        "duplicate-env",
        lambda o: _pc(o)["env"].append({"name": "STORAGE_URI", "value": "s3://b/x"}),
        "schema",
        "error",
        "spec.predictor.containers[0].env[1]",
        "Duplicate value",
    ),
    (
        "canary-percent-range-schema",
        lambda o: _canary_list(o, [_canary("v2", 101)]),
        "schema",
        "error",
        "spec.canary[0].trafficPercent",
        "must be <= 100",
    ),
    (
        "isvc-name",
        lambda o: o["metadata"].update(name="9digits"),
        "webhook/name",
        "error",
        "metadata.name",
        "must consist of lower case",
    ),
    (
        "deployment-mode",
        lambda o: o["metadata"]["annotations"].update(
            {"serving.kserve.io/deploymentMode": "Serverfull"}
        ),
        "webhook/deployment-mode",
        "error",
        'metadata.annotations["serving.kserve.io/deploymentMode"]',
        "unknown deployment mode",
    ),
    (
        "autoscaler-class",
        lambda o: o["metadata"]["annotations"].update({"serving.kserve.io/autoscalerClass": "vpa"}),
        "webhook/autoscaler-class",
        "error",
        'metadata.annotations["serving.kserve.io/autoscalerClass"]',
        "not a supported autoscaler class",
    ),
    (
        "min-replicas-negative",
        lambda o: _pred(o).update(minReplicas=-1),
        "webhook/replicas",
        "error",
        "spec.predictor.minReplicas",
        "'MinReplicas' cannot be less than 0",
    ),
    (
        "max-replicas-negative",
        lambda o: _pred(o).update(maxReplicas=-2),
        "webhook/replicas",
        "error",
        "spec.predictor.maxReplicas",
        "'MaxReplicas' cannot be less than 0",
    ),
    (
        "min-above-max",
        lambda o: _pred(o).update(minReplicas=5, maxReplicas=2),
        "webhook/replicas",
        "error",
        "spec.predictor.minReplicas",
        "cannot be greater than MaxReplicas",
    ),
    (
        "container-concurrency",
        lambda o: _pred(o).update(containerConcurrency=-1),
        "webhook/replicas",
        "error",
        "spec.predictor.containerConcurrency",
        "parallelism cannot be less than 0",
    ),
    (
        "two-implementations",
        lambda o: _pred(o).update(model={"modelFormat": {"name": "onnx"}}),
        "webhook/implementation",
        "error",
        "spec.predictor",
        "exactly one implementation",
    ),
    (
        "kpa-cpu-metric",
        lambda o: _pred(o).update(scaleMetric="cpu"),
        "webhook/scale-metric",
        "error",
        "spec.predictor.scaleMetric",
        "not a supported metric for the Knative Pod Autoscaler",
    ),
    (
        "kpa-rps-target",
        lambda o: _pred(o).update(scaleMetric="rps", scaleTarget=0),
        "webhook/scale-metric",
        "error",
        "spec.predictor.scaleTarget",
        "the target for rps should be at least 1",
    ),
    (
        "hpa-concurrency-metric",
        lambda o: (_standard(o), _pred(o).update(scaleMetric="concurrency")),
        "webhook/scale-metric",
        "error",
        "spec.predictor.scaleMetric",
        "not a supported metric for the HPA",
    ),
    (
        "hpa-cpu-target",
        lambda o: (_standard(o), _pred(o).update(scaleMetric="cpu", scaleTarget=150)),
        "webhook/scale-metric",
        "error",
        "spec.predictor.scaleTarget",
        "[1-100]",
    ),
    (
        "kpa-deployment-strategy",
        lambda o: _pred(o).update(deploymentStrategy={"type": "Recreate"}),
        "webhook/scale-metric",
        "error",
        "spec.predictor.deploymentStrategy",
        "only supported for raw deployment",
    ),
    (
        "storage-scheme",
        lambda o: _pc(o)["env"][0].update(value="ftp://models/digits"),
        "webhook/storage-uri",
        "error",
        "spec.predictor.containers[0].env[0].value",
        "'ftp://models/digits' is not supported",
    ),
    (
        "storage-uri-and-uris",
        lambda o: (
            _pred(o).pop("containers"),
            _pred(o).update(
                model={"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"},
                storageUris=[{"uri": "s3://b/n", "mountPath": "/mnt/n"}],
            ),
        ),
        "webhook/storage-uri",
        "error",
        "spec.predictor.storageUris",
        "Setting both StorageURI and StorageURIs",
    ),
    (
        "protocol-env",
        lambda o: _pc(o)["env"].append({"name": "PROTOCOL", "value": "v3"}),
        "webhook/protocol",
        "error",
        "spec.predictor.containers[0].env[1].value",
        "invalid protocol 'v3'",
    ),
    (
        "canary-percent-in-standard",
        lambda o: (_standard(o), _pred(o).update(canaryTrafficPercent=10)),
        "kbundle/canary-mode",
        "error",
        "spec.predictor.canaryTrafficPercent",
        "ignored in Standard mode",
    ),
    (
        "canary-percent-range",
        lambda o: _pred(o).update(canaryTrafficPercent=120),
        "kbundle/canary-percent",
        "error",
        "spec.predictor.canaryTrafficPercent",
        "outside 0-100",
    ),
    (
        "canary-list-in-knative",
        lambda o: o["spec"].update(canary=[_canary("v2", 10)]),
        "webhook/canary",
        "error",
        "spec.canary",
        "only supported in Standard",
    ),
    (
        "canary-list-sum",
        lambda o: _canary_list(o, [_canary("v2", 60), _canary("v3", 50)]),
        "webhook/canary",
        "error",
        "spec.canary",
        "add up to 110",
    ),
    (
        "canary-list-name",
        lambda o: _canary_list(o, [_canary("", 10)]),
        "webhook/canary",
        "error",
        "spec.canary[0].predictor.name",
        "name is required",
    ),
    (
        "canary-list-unique",
        lambda o: _canary_list(o, [_canary("v2", 10), _canary("v2", 10)]),
        "webhook/canary",
        "error",
        "spec.canary[1].predictor.name",
        "already used",
    ),
    (
        "canary-list-autoscaling",
        lambda o: _canary_list(o, [_canary("v2", 10, maxReplicas=3)]),
        "webhook/canary",
        "error",
        "spec.canary[0].predictor.maxReplicas",
        "no autoscaling",
    ),
    (
        "kbundle-setting-value",
        lambda o: _pc(o)["env"].append({"name": "KBUNDLE_DEVICE", "value": "gpu"}),
        "kbundle/settings",
        "error",
        "spec.predictor.containers[0].env[1].value",
        "refuse to start: device: 'gpu' is not one of",
    ),
    (
        "kbundle-setting-name",
        lambda o: _pc(o)["env"].append({"name": "KBUNDLE_MAX_BATCH", "value": "8"}),
        "lint/kbundle-settings",
        "warning",
        "spec.predictor.containers[0].env[1].name",
        "'KBUNDLE_MAX_BATCH' (did you mean 'KBUNDLE_MAX_BATCH_SIZE'?) is not a kbundle setting",
    ),
    (
        "gpu-requests-limits",
        lambda o: _gpu(o, "1", "2"),
        "pod/gpu-limits",
        "error",
        'spec.predictor.containers[0].resources.requests["nvidia.com/gpu"]',
        "requests (1) != limits (2)",
    ),
    (
        "gpu-no-limit",
        lambda o: _pc(o).update(resources={"requests": {"nvidia.com/gpu": "1"}}),
        "pod/gpu-limits",
        "error",
        "spec.predictor.containers[0].resources.limits",
        "without a limit",
    ),
    (
        "gpu-scale-to-zero-no-probe",
        lambda o: (_gpu(o), _pred(o).update(minReplicas=0)),
        "lint/gpu-cold-start",
        "warning",
        "spec.predictor.minReplicas",
        "no startupProbe",
    ),
    (
        "gpu-probe-over-deadline",
        lambda o: (
            _gpu(o),
            _pred(o).update(minReplicas=0),
            o["metadata"]["annotations"].update({"serving.knative.dev/progress-deadline": "5m"}),
            _pc(o).update(
                startupProbe={
                    "tcpSocket": {"port": 8080},
                    "periodSeconds": 10,
                    "failureThreshold": 60,
                }
            ),
        ),
        "lint/gpu-cold-start",
        "warning",
        "spec.predictor.containers[0].startupProbe",
        "exceeds the progress deadline",
    ),
    (
        "workers",
        lambda o: _pc(o)["args"].extend(["--workers", "4"]),
        "lint/workers",
        "warning",
        "spec.predictor.containers[0].args",
        "--workers 4",
    ),
    (
        "workers-no-shm",
        lambda o: _pc(o)["args"].extend(["--workers", "2"]),
        "lint/workers",
        "warning",
        "spec.predictor.containers[0].args",
        "emptyDir with medium: Memory",
    ),
    (
        "workers-appended",
        lambda o: (
            _tc(o).update(args=["--predictor_protocol", "v2"]),
            o["spec"]["transformer"].update(containerConcurrency=8),
        ),
        "lint/workers",
        "warning",
        "spec.transformer.containers[0].args",
        "appends --workers 8",
    ),
    (
        "predictor-protocol",
        lambda o: _tc(o).update(args=["--protocol", "v2", "--workers", "1"]),
        "lint/predictor-protocol",
        "warning",
        "spec.transformer.containers[0].args",
        "--protocol is parsed but ignored",
    ),
    (
        "latest-tag",
        lambda o: _pc(o).update(image="ghcr.io/kbundle/predictor-cpu:latest"),
        "lint/image-tag",
        "warning",
        "spec.predictor.containers[0].image",
        "'latest' tag",
    ),
    (
        "untagged",
        lambda o: _tc(o).update(image="ghcr.io/kbundle/transformer"),
        "lint/image-tag",
        "warning",
        "spec.transformer.containers[0].image",
        "no tag",
    ),
    (
        "plain-secret",
        lambda o: _pc(o)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc123"}),
        "lint/plain-secret",
        "warning",
        "spec.predictor.containers[0].env[1].value",
        "looks like a secret",
    ),
]


def _write(tmp_path: Path, obj: dict, name: str = "isvc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def test_base_object_is_clean(tmp_path, crds, base_isvc):
    report = validate_paths([_write(tmp_path, base_isvc)], crds)
    assert report.findings == [] and len(report.checked) == 1


@pytest.mark.parametrize(
    ("mutate", "rule", "severity", "path", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rule_reports_field_and_message(
    tmp_path, crds, base_isvc, mutate, rule, severity, path, fragment
):
    mutate(base_isvc)
    report = validate_paths([_write(tmp_path, base_isvc)], crds)
    hits = [f for f in report.findings if f.rule == rule]
    assert hits, f"no {rule} finding; got: {[f.format() for f in report.findings]}"
    match = [f for f in hits if fragment in f.message and f.as_dict()["path"] == path]
    assert match, f"expected {path}: ...{fragment}...; got: {[f.format() for f in hits]}"
    assert match[0].severity == severity
    assert match[0].line > 1  # placed on a real line of the file


def test_line_numbers_point_at_the_field(tmp_path, crds):
    text = (
        (FIXTURES / "csc.yaml").read_text()
        + "---\n"
        + yaml.safe_dump(
            {
                **BASE_ISVC,
                "spec": {
                    **BASE_ISVC["spec"],
                    "predictor": {**BASE_ISVC["spec"]["predictor"], "minReplicas": -1},
                },
            },
            sort_keys=False,
        )
    )
    path = tmp_path / "multi.yaml"
    path.write_text(text)
    report = validate_paths([path], crds)
    [finding] = [f for f in report.findings if f.rule == "webhook/replicas"]
    assert text.splitlines()[finding.line - 1].strip() == "minReplicas: -1"
    assert finding.format().startswith(
        f"{path}:{finding.line}: error [InferenceService/digits] spec.predictor.minReplicas:"
    )


def test_cluster_storage_container_enables_its_scheme(tmp_path, crds, base_isvc):
    base_isvc["spec"]["predictor"]["containers"][0]["env"][0]["value"] = "kbundle-test://digits/v1"
    isvc_file = _write(tmp_path, base_isvc)
    alone = validate_paths([isvc_file], crds)
    assert [f.rule for f in alone.errors] == ["webhook/storage-uri"]
    with_csc = validate_paths([isvc_file, FIXTURES / "csc.yaml"], crds)
    assert with_csc.findings == []
    assert any("ClusterStorageContainer/kbundle-test" in c for c in with_csc.checked)


def test_cluster_storage_container_is_schema_checked(tmp_path, crds):
    csc = yaml.safe_load((FIXTURES / "csc.yaml").read_text())
    del csc["spec"]["supportedUriFormats"]
    csc["spec"]["container"]["imagePullPolicy"] = 3
    report = validate_paths([_write(tmp_path, csc)], crds)
    got = {(f.as_dict()["path"], f.message.split(":")[0]) for f in report.errors}
    assert ("spec.supportedUriFormats", "Required value") in got
    assert (
        "spec.container.imagePullPolicy",
        "must be of type string, got integer 3 (quote it",
    ) in got


def test_wrong_api_version_and_unknown_kinds(tmp_path, crds, base_isvc):
    base_isvc["apiVersion"] = "serving.kserve.io/v1alpha1"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(base_isvc) + "---\n" + yaml.safe_dump(secret))
    report = validate_paths([path], crds)
    assert [f.as_dict()["path"] for f in report.errors] == ["apiVersion"]
    assert "served: serving.kserve.io/v1beta1" in report.errors[0].message
    assert report.skipped and "Secret/s" in report.skipped[0]


def test_unquoted_yes_is_a_boolean_like_kubectl_reads_it(tmp_path, crds, base_isvc):
    path = _write(tmp_path, base_isvc)
    path.write_text(path.read_text().replace("value: s3://kbundle-models/digits/v1", "value: yes"))
    [finding] = validate_paths([path], crds).errors
    assert finding.as_dict()["path"] == "spec.predictor.containers[0].env[0].value"
    assert "got boolean true (quote it" in finding.message


def test_malformed_yaml_reports_its_line(tmp_path, crds):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: v1\nkind: [unclosed\nmetadata: {}\n")
    [finding] = validate_paths([path], crds).findings
    assert finding.rule == "yaml" and finding.line >= 2 and "not valid YAML" in finding.message


def test_secret_lint_looks_at_whole_words(tmp_path, crds, base_isvc):
    env = base_isvc["spec"]["predictor"]["containers"][0]["env"]
    env += [
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "KEYCLOAK_URL", "value": "https://auth"},
        {"name": "SSL_KEY", "value": "/etc/tls/tls.key"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "hf-apikey", "value": "abc"},
        {"name": "DB_PASSWORD", "value": "hunter2"},
    ]
    report = validate_paths([_write(tmp_path, base_isvc)], crds)
    flagged = [f.message.split()[1] for f in report.findings if f.rule == "lint/plain-secret"]
    assert flagged == ["hf-apikey", "DB_PASSWORD"]


def test_missing_spec_is_an_error(tmp_path, crds, base_isvc):
    del base_isvc["spec"]
    [finding] = validate_paths([_write(tmp_path, base_isvc)], crds).errors
    assert finding.as_dict()["path"] == "spec" and "needs spec.predictor" in finding.message


def test_predictor_workers_with_a_memory_dev_shm_is_clean(tmp_path, crds, base_isvc):
    predictor = base_isvc["spec"]["predictor"]
    container = predictor["containers"][0]
    container["args"] = [*container.get("args", []), "--workers", "4"]
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    predictor["volumes"] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}
    ]
    report = validate_paths([_write(tmp_path, base_isvc)], crds)
    assert report.findings == [], report.findings
