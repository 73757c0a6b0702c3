"""The scrape objects, alert rules and dashboard under inferenceservices/monitoring/: valid
against the real Prometheus Operator CRDs (`kbundle validate`), rules accepted by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kbundle.manifests.crds import packaged_dir

REPO = Path(__file__).parents[2]
MONITORING = REPO / "inferenceservices" / "monitoring"


@pytest.fixture(scope="module")
def crd_dir() -> Path:
    """The Prometheus Operator CRDs packaged with kbundle; missing ones fail the test."""
    return packaged_dir("monitoring")


def validate(crd_dir: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kbundle.cli", "validate", "--crd", str(crd_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_podmonitor_and_rules_pass_kbundle_validate(crd_dir):
    result = validate(crd_dir, MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 object(s) checked" in result.stdout and "not checked" not in result.stderr


def test_a_broken_podmonitor_is_rejected(crd_dir, tmp_path):
    docs = list(yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text()))
    docs[0]["spec"]["podMetricsEndpoints"][0]["honorLabels"] = "yes please"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    result = validate(crd_dir, bad)
    assert result.returncode != 0 and "honorLabels" in result.stdout + result.stderr


def test_podmonitor_gives_the_labels_analyze_selects_on():
    for doc in yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text()):
        for endpoint in doc["spec"]["podMetricsEndpoints"]:
            targets = {r["targetLabel"] for r in endpoint["relabelings"]}
            assert {"isvc", "component"} <= targets


def test_alert_rules_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stderr


def test_dashboard_has_the_issue_panels():
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in (
        "kbundle_requests_total",
        "kbundle_request_duration_seconds_bucket",
        "kbundle_batch_size_sum",
        "kbundle_queue_wait_seconds_bucket",
        "revision_app_request_count",
        "revision_app_request_latencies_bucket",
    ):
        assert metric in exprs


def test_plain_kbundle_validate_checks_them_with_the_packaged_crds():
    assert (packaged_dir("monitoring") / "monitoring.coreos.com_podmonitors.yaml").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "kbundle.cli", "validate", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 object(s) checked" in result.stdout and "monitoring" in result.stdout
