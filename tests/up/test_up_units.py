"""The pure parts of `kbundle up`: manifest reading, launch args, Knative rules, storage map, analysis."""

from __future__ import annotations

import pytest
import yaml
from up_harness import HERE

from kbundle.errors import ConfigError
from kbundle.local import revisions as rv
from kbundle.local.autoscale import parse_duration, scale_down_delay
from kbundle.local.launch import (
    get_flag,
    map_mounts,
    predictor_launch,
    set_flag,
    transformer_launch,
)
from kbundle.local.manifest import image_kind, load_inference_service, parse_inference_service
from kbundle.local.metrics import RequestStats
from kbundle.local.storage import StorageMap, cached_fetch

TRANSFORMER_ISVC = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: digits, namespace: ml}
spec:
  transformer:
    containerConcurrency: 4
    containers:
      - name: kserve-container
        image: ghcr.io/kbundle/transformer:0.1.0
        args: ["--predictor_protocol", "grpc-v2", "--model_dir=/mnt/models"]
        env: [{name: STORAGE_URI, value: s3://kbundle-models/digits/v1}]
  predictor:
    canaryTrafficPercent: 10
    containers:
      - name: kserve-container
        image: registry.example.com/mirror/kbundle/predictor-gpu@sha256:abc
        args: ["--model_name", "digits", "--model_dir", "/mnt/models"]
        env: [{name: STORAGE_URI, value: s3://kbundle-models/digits/v2}]
"""


def _doc(text: str = TRANSFORMER_ISVC) -> dict:
    return yaml.safe_load(text)


# -- manifest ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, kind",
    [
        ("ghcr.io/kbundle/predictor-cpu:0.1.0", "predictor"),
        ("ghcr.io/kbundle/predictor-gpu", "predictor"),
        ("registry.local:5000/kbundle/transformer:dev", "transformer"),
        ("quay.io/acme/kbundle-predictor-cpu:1", "predictor"),
        ("docker.io/acme/predictor-cpu:1", None),  # right name, not our image
        ("ghcr.io/kbundle/storage-init:1", None),  # ours, but not a serving component
        ("kserve/sklearnserver:v0.14", None),
    ],
)
def test_images_are_recognised_by_path_and_name(image, kind):
    assert image_kind(image) == kind


def test_custom_containers_parse_with_transformer_and_canary():
    spec = parse_inference_service(_doc())
    assert spec.name == "digits" and spec.mode == "Knative" and spec.canary_percent == 10
    assert spec.variant.predictor.module == "kbundle.predictors"
    assert spec.variant.transformer.module == "kbundle.transformers"
    assert spec.variant.predictor.storage == (("s3://kbundle-models/digits/v2", "/mnt/models"),)


def test_model_style_and_the_component_annotation_are_accepted():
    spec = load_inference_service(HERE / "digits-model.yaml")
    assert spec.variant.predictor.model_style and spec.variant.predictor.min_replicas == 0
    doc = _doc()
    doc["spec"]["predictor"]["containers"][0]["image"] = "my.registry/team/serving:3"
    doc["spec"]["predictor"]["annotations"] = {"kbundle.io/component": "predictor"}
    assert parse_inference_service(doc).variant.predictor.module == "kbundle.predictors"


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["spec"]["predictor"]["containers"][0].update(
                image="kserve/sklearnserver:1"
            ),
            "spec.predictor.containers[0].image 'kserve/sklearnserver:1' is not a kbundle component",
        ),
        (
            lambda d: d["spec"]["predictor"].update(canaryTrafficPercent=150),
            "canaryTrafficPercent must be an integer 0..100",
        ),
        (
            lambda d: d["spec"]["predictor"].update(minReplicas=-1),
            "spec.predictor.minReplicas must be an integer >= 0",
        ),
        (
            lambda d: d["metadata"].update(
                annotations={"serving.kserve.io/deploymentMode": "ModelMesh"}
            ),
            "ModelMesh",
        ),
        (
            lambda d: d["spec"].update(canary=[{"predictor": {"name": "x"}, "trafficPercent": 10}]),
            "Standard",
        ),
        (
            lambda d: d["spec"]["transformer"]["containers"][0].update(
                image="ghcr.io/kbundle/predictor-cpu:1"
            ),
            "is a kbundle predictor, not a transformer",
        ),
    ],
)
def test_misfits_are_refused_naming_the_field(edit, message):
    doc = _doc()
    edit(doc)
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        parse_inference_service(doc)


def test_model_style_with_an_unknown_format_is_refused():
    doc = yaml.safe_load((HERE / "digits-model.yaml").read_text())
    doc["spec"]["predictor"]["model"]["modelFormat"]["name"] = "sklearn"
    with pytest.raises(ConfigError, match="modelFormat.name 'sklearn' has no local runtime"):
        parse_inference_service(doc)


def test_standard_mode_reads_spec_canary_and_ignores_the_percent():
    spec = load_inference_service(HERE / "digits-standard.yaml")
    assert spec.mode == "Standard" and spec.canary_percent is None
    [(name, variant, percent)] = spec.standard_canaries
    assert (name, percent) == ("digits-v2", 25)
    assert variant.predictor.storage[0][0].endswith("digits/v2")


def test_only_traffic_edits_keep_the_template_hash():
    doc = _doc()
    before = parse_inference_service(doc).template_hash
    doc["spec"]["predictor"]["canaryTrafficPercent"] = 50
    assert parse_inference_service(doc).template_hash == before
    doc["spec"]["predictor"]["containers"][0]["env"][0]["value"] = "s3://kbundle-models/digits/v1"
    assert parse_inference_service(doc).template_hash != before


# -- launch: the controller's args, made local -------------------------------------------------
def test_flags_are_replaced_in_both_spellings_or_appended():
    assert set_flag(["--http_port", "8080", "--x"], "--http_port", "1") == [
        "--http_port",
        "1",
        "--x",
    ]
    assert set_flag(["--http_port=8080"], "--http_port", "1") == ["--http_port=1"]
    assert set_flag([], "--grpc_port", "2") == ["--grpc_port", "2"]
    assert get_flag(["--a=b"], "--a") == "b" and get_flag(["--a", "b"], "--a") == "b"
    assert map_mounts("--model_dir=/mnt/models/sub", {"/mnt/models": "/c"}) == "--model_dir=/c/sub"
    assert map_mounts("/mnt/modelsX", {"/mnt/models": "/c"}) == "/mnt/modelsX"


def test_transformer_gets_what_the_controller_appends_pointed_at_the_local_predictor():
    spec = parse_inference_service(_doc())
    pred = predictor_launch(
        spec.variant.predictor, "digits", "digits-00001", {"/mnt/models": "/cache/p"}, 9001, 9002
    )
    assert pred.argv[1:3] == ["-m", "kbundle.predictors"]
    assert (
        get_flag(pred.argv, "--model_dir") == "/cache/p"
        and get_flag(pred.argv, "--http_port") == "9001"
    )
    assert pred.env["KBUNDLE_MODEL_VERSION"] == "digits-00001" and pred.model_name == "digits"
    trans = transformer_launch(
        spec.variant.transformer,
        "digits",
        "digits-00001",
        {"/mnt/models": "/cache/t"},
        pred,
        9003,
        9004,
    )
    argv = trans.argv
    assert (
        get_flag(argv, "--predictor_host") == "127.0.0.1:9002"
    )  # grpc-v2 -> the predictor's gRPC port
    assert get_flag(argv, "--model_name") == "digits" and get_flag(argv, "--workers") == "4"
    assert get_flag(argv, "--model_dir") == "/cache/t" and get_flag(argv, "--http_port") == "9003"
    assert trans.env["STORAGE_URI"] == "s3://kbundle-models/digits/v1"  # kept as the cluster has it


def test_model_style_predictor_gets_the_runtime_args():
    spec = load_inference_service(HERE / "digits-model.yaml")
    launch = predictor_launch(
        spec.variant.predictor, "digits-model", "r1", {"/mnt/models": "/cache/m"}, 1, 2
    )
    assert get_flag(launch.argv, "--model_name") == "digits-model"
    assert get_flag(launch.argv, "--model_dir") == "/cache/m"


# -- Knative revision rules ---------------------------------------------------------------------
def _apply(state, template: str, percent):
    rv.add_revision_if_changed(state, template, {})
    traffic = rv.traffic_for(state, percent)
    rv.record_ready_traffic(state, traffic)
    return traffic


def test_knative_rollout_sequence():
    state = rv.RolloutState("m")
    assert _apply(state, "a", 20) == {"m-00001": 100}  # nothing to split against: all to the first
    assert state.latest_rolled_out == "m-00001"
    assert _apply(state, "b", 20) == {"m-00002": 20, "m-00001": 80}
    assert state.latest_rolled_out == "m-00001"  # a canary is not rolled out
    assert _apply(state, "b", 0) == {"m-00002": 0, "m-00001": 100}  # rollback pins the previous
    assert _apply(state, "c", 30) == {
        "m-00003": 30,
        "m-00001": 70,
    }  # a newer canary vs the rolled-out one
    assert _apply(state, "c", None) == {"m-00003": 100}  # promote
    assert (state.latest_rolled_out, state.previous_rolled_out) == ("m-00003", "m-00001")
    assert _apply(state, "c", 0) == {"m-00003": 100}  # after promotion there is nothing to pin


def test_state_round_trips_through_its_file(tmp_path):
    state = rv.RolloutState("m")
    _apply(state, "a", None)
    _apply(state, "b", 10)
    rv.save_state(tmp_path, state)
    again = rv.load_state(tmp_path, "m")
    assert again == state
    assert rv.load_state(tmp_path, "other").revisions == []


# -- autoscaling, storage, metrics, analysis -----------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("1m30s", 90), ("2m", 120), ("500ms", 0.5), ("1h", 3600), ("5", 5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_duration_and_annotation_precedence():
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("soon")
    key = "autoscaling.knative.dev/scale-down-delay"
    assert scale_down_delay({key: "5s"}, {key: "9s"}, 60) == 5
    assert scale_down_delay({}, {key: "9s"}, 60) == 9
    assert scale_down_delay({}, {}, 60) == 60


def test_storage_map_longest_prefix_and_local_copy(tmp_path):
    (tmp_path / "b" / "digits" / "v1").mkdir(parents=True)
    (tmp_path / "b" / "digits" / "v1" / "model.onnx").write_bytes(b"x")
    smap = StorageMap.parse([f"s3://bucket={tmp_path / 'b'}", "s3://bucket/digits=/elsewhere"])
    assert smap.resolve("s3://bucket/digits/v1") == "/elsewhere/v1"
    assert smap.resolve("s3://bucket/other") == str(tmp_path / "b" / "other")
    assert smap.resolve("gs://x/y") == "gs://x/y"
    with pytest.raises(ConfigError, match="expected SCHEME://BUCKET"):
        StorageMap.parse(["/just/a/path"])
    fetched = cached_fetch(str(tmp_path / "b" / "digits" / "v1"), tmp_path / "cache")
    assert (fetched / "model.onnx").read_bytes() == b"x" and not (
        fetched / "model.onnx"
    ).is_symlink()
    assert cached_fetch(str(tmp_path / "b" / "digits" / "v1"), tmp_path / "cache") == fetched


def test_a_failed_fetch_names_the_uri_and_storage_inits_reason(tmp_path):
    """Models are fetched by the real storage initializer (a subprocess, as in the pod)."""
    from kbundle.local import storage

    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as err:
        storage.fetch_model(str(missing), tmp_path / "m")
    assert f"storage-init failed for {missing} (exit 10)" in str(err.value)
    assert "does not exist" in str(err.value) and not (tmp_path / "m").exists()


def test_request_stats_window_and_percentiles():
    stats = RequestStats(warmup=0)
    for i in range(100):
        stats.record((i + 1) / 1000, error=i < 5)
    total = stats.summary()
    assert (total.requests, total.errors, total.error_rate) == (100, 5, 0.05)
    assert total.p50_ms == pytest.approx(50.5) and total.p99_ms == pytest.approx(99.01)
    assert stats.summary(window_s=60).requests == 100


def test_tag_routing_by_host_needs_the_kserve_annotation(tmp_path):
    from kbundle.local.runtime import RuntimeOptions
    from kbundle.local.service import LocalService

    service = LocalService(tmp_path / "x.yaml", RuntimeOptions(tmp_path, tmp_path, StorageMap(())))
    doc = _doc()
    service.spec = parse_inference_service(doc)
    assert service.tag_from_host("latest-digits.ml.example.com") is None  # not enabled
    doc["metadata"]["annotations"] = {"serving.kserve.io/enable-tag-routing": "true"}
    service.spec = parse_inference_service(doc)
    assert service.tag_from_host("latest-digits.ml.example.com") == "latest"
    assert service.tag_from_host("prev-digits.ml.example.com:8080") == "prev"
    assert service.tag_from_host("digits.ml.example.com") is None


@pytest.mark.parametrize(
    "raw, mode",
    [
        ("Serverless", "Knative"),
        ("Knative", "Knative"),
        ("RawDeployment", "Standard"),
        ("Standard", "Standard"),
        ("serverless", None),
        ("ModelMesh", None),
        ("Raw", None),
    ],
)
def test_up_and_validate_read_the_deployment_mode_alike(raw, mode):
    """One InferenceService model: `up` runs what `validate` accepts, as the same mode."""
    from kbundle.manifests import isvc, webhook_rules

    doc = _doc()
    doc["metadata"]["annotations"] = {isvc.MODE_ANNOTATION: raw}
    flagged = any(
        i.rule == "webhook/deployment-mode" for i in webhook_rules.check(doc, [], "Knative")
    )
    assert flagged == (raw not in isvc.MODES)
    if mode is None:
        with pytest.raises(ConfigError, match="cannot run locally"):
            parse_inference_service(doc)
    else:
        assert parse_inference_service(doc).mode == mode == isvc.deployment_mode(doc)
