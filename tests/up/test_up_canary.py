"""`kbundle up` revisions and canary, Knative semantics, one real process for the module.

Order matters (one rollout story): v1 serves all -> v2 at 30% -> rollback (0) -> promote.
"""

from __future__ import annotations

import collections
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from up_harness import HERE, digits_rows, infer_json, kbundle_cmd, revision_of, start_up, wait_for

REQUESTS = 400
CANARY = 30


@pytest.fixture(scope="module")
def up(tmp_path_factory, sample_models: Path):
    proc = start_up(HERE / "digits-custom.yaml", tmp_path_factory.mktemp("up-canary"))
    yield proc
    proc.stop()


def _revisions_answering(up, n: int) -> collections.Counter:
    rows, _ = digits_rows(1)
    counts = collections.Counter()
    with requests.Session() as session:
        for _ in range(n):
            counts[revision_of(*infer_json(up, rows, session=session))] += 1
    return counts


def _set_canary(up, percent: int | None, storage: str | None = None) -> None:
    doc = up.read()
    predictor = doc["spec"]["predictor"]
    if percent is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = percent
    if storage:
        predictor["containers"][0]["env"][0]["value"] = storage
    up.write(doc)


def test_first_revision_answers_rest_json_binary_and_grpc_correctly(up):
    rows, labels = digits_rows(32)  # the predictor's max_request_rows default (max_batch_size)
    headers, body = infer_json(up, rows)
    assert revision_of(headers, body) == "digits-00001"
    json_labels = np.array(next(o for o in body["outputs"] if o["name"] == "label")["data"])
    assert (json_labels == labels).mean() > 0.85  # a real digits model answered, not a stub

    http = httpclient.InferenceServerClient(up.rest_url)
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = http.infer("digits", [tensor])
    assert np.array_equal(result.as_numpy("label"), json_labels)
    assert result.get_response()["model_version"] == "digits-00001"

    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    assert grpc.is_server_ready() and grpc.is_model_ready("digits")
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = grpc.infer("digits", [tensor])
    assert np.array_equal(result.as_numpy("label"), json_labels)
    assert result.get_response().model_version == "digits-00001"
    assert grpc.get_model_metadata("digits").inputs[0].name == "input"


def test_min_replicas_one_keeps_an_idle_revision_running(up):
    [before] = up.status()["revisions"]
    time.sleep(2.5)  # idle well past the 1 s scale-down delay of the manifest
    [after] = up.status()["revisions"]
    assert after["state"] == "ready" and not after["scales_to_zero"]
    assert after["components"][0]["pid"] == before["components"][0]["pid"]


def test_bad_request_keeps_its_4xx_through_the_ingress(up):
    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("digits", [tensor])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value
    assert "input" in err.value.message() and "[1, 5]" in err.value.message(), err.value
    errors = up.status()["revisions"][0]["totals"]["errors"]
    assert errors == 0  # a client error is not held against the revision


def test_canary_30_percent_sends_about_30_percent_to_latest(up):
    _set_canary(up, CANARY, "s3://kbundle-models/digits/v2")
    wait_for(
        lambda: up.traffic() == {"digits-00002": CANARY, "digits-00001": 100 - CANARY},
        90,
        "30% split",
        up,
    )
    counts = _revisions_answering(up, REQUESTS)
    assert set(counts) == {"digits-00001", "digits-00002"}
    mean, sd = REQUESTS * CANARY / 100, math.sqrt(REQUESTS * 0.3 * 0.7)
    print(
        f"30% canary: {counts['digits-00002']}/{REQUESTS} from the latest (expected {mean:.0f} +- {4 * sd:.0f})"
    )
    assert abs(counts["digits-00002"] - mean) <= 4 * sd, counts  # binomial, 4 sigma
    status = up.status()
    assert status["latest"] == "digits-00002" and status["latest_rolled_out"] == "digits-00001"
    tags = {r["name"]: r["tag"] for r in status["revisions"]}
    assert tags == {"digits-00002": "latest", "digits-00001": "prev"}


def test_a_tag_pins_a_request_to_the_latest_or_previous_revision(up):
    rows, _ = digits_rows(1)
    with requests.Session() as session:
        session.headers["x-kbundle-tag"] = "latest"
        assert {revision_of(*infer_json(up, rows, session=session)) for _ in range(20)} == {
            "digits-00002"
        }
        session.headers["x-kbundle-tag"] = "prev"
        assert {revision_of(*infer_json(up, rows, session=session)) for _ in range(20)} == {
            "digits-00001"
        }
    grpc = grpcclient.InferenceServerClient(up.grpc_url)
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = grpc.infer("digits", [tensor], headers={"x-kbundle-tag": "latest"})
    assert result.get_response().model_version == "digits-00002"
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("digits", [tensor], headers={"x-kbundle-tag": "nope"})
    assert err.value.status() == "StatusCode.NOT_FOUND", err.value
    assert "no revision tagged 'nope'" in err.value.message(), err.value


def test_status_and_canary_analyze_report_both_revisions(up):
    state = ["--state-dir", str(up.state_root)]
    out = subprocess.run(kbundle_cmd("status", *state), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "digits-00002" in out.stdout and "30%" in out.stdout and "70%" in out.stdout
    # Both revisions are healthy; latency ratios are left loose because a p99 over ~100 requests
    # on a shared 2-core machine is noise (the latency rules are unit-tested in test_up_units).
    lenient = ["--max-p99-ratio", "1000", "--max-p50-ratio", "1000"]
    out = subprocess.run(
        kbundle_cmd(
            "canary", "analyze", *state, "--window", "120", "--min-requests", "50", *lenient
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: PROMOTE" in out.stdout
    assert "digits-00002" in out.stdout and "p99" in out.stdout
    # Demanding more requests than the canary had: hold, with its own exit status.
    out = subprocess.run(
        kbundle_cmd("canary", "analyze", *state, "--min-requests", "100000", *lenient),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3 and "verdict: HOLD" in out.stdout


def test_rollback_with_zero_pins_the_previous_revision(up):
    _set_canary(up, 0)
    wait_for(lambda: up.traffic() == {"digits-00002": 0, "digits-00001": 100}, 30, "rollback", up)
    assert _revisions_answering(up, 100) == {"digits-00001": 100}
    latest = next(r for r in up.status()["revisions"] if r["name"] == "digits-00002")
    wait_for(
        lambda: all(
            c["pid"] is None
            for c in next(r for r in up.status()["revisions"] if r["name"] == "digits-00002")[
                "components"
            ]
        ),
        30,
        "canary stopped",
        up,
    )
    assert latest["traffic"] == 0


def test_removing_the_percent_promotes_the_latest(up):
    _set_canary(up, None)
    wait_for(lambda: up.traffic() == {"digits-00002": 100}, 90, "promotion", up)
    assert _revisions_answering(up, 100) == {"digits-00002": 100}
    status = up.status()
    assert status["latest_rolled_out"] == "digits-00002"
    assert status["previous_rolled_out"] == "digits-00001"


def test_a_broken_edit_leaves_traffic_where_it_was(up):
    doc = up.read()
    doc["spec"]["predictor"]["containers"][0]["image"] = "docker.io/someone/sklearn-server:1"
    up.write(doc)
    wait_for(lambda: up.status()["last_error"] is not None, 30, "apply error", up)
    assert "is not a kbundle component" in up.status()["last_error"]
    assert _revisions_answering(up, 20) == {"digits-00002": 20}


def test_kbundle_up_again_on_an_edited_file_continues_the_rollout(up):
    """The state folder keeps the rolled-out revision: a restart with a new template canaries
    against it, as re-applying to a cluster would."""
    assert up.stop() == 0
    doc = up.read()
    predictor = doc["spec"]["predictor"]
    predictor["containers"][0]["image"] = "ghcr.io/kbundle/predictor-cpu:0.1.0"
    predictor["containers"][0]["env"][0]["value"] = "s3://kbundle-models/digits/v1"
    predictor["canaryTrafficPercent"] = 50
    up.write(doc)
    again = start_up(up.manifest, up.manifest.parent)
    try:
        assert again.traffic() == {"digits-00003": 50, "digits-00002": 50}
        assert set(_revisions_answering(again, 40)) == {"digits-00002", "digits-00003"}
    finally:
        again.stop()
