"""The CRDs ship inside the wheel, and `kbundle validate` from that wheel uses them from any folder.

The wheel is built for real (pip, no build isolation) and imported from its own files with the
checkout kept off sys.path, so a test that passes here passes for a `pip install kbundle` user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from manifest_helpers import REPO, SAMPLES

from kbundle.manifests import crds as crds_module

KSERVE = {
    "serving.kserve.io_inferenceservices.yaml",
    "serving.kserve.io_clusterstoragecontainers.yaml",
    "serving.kserve.io_servingruntimes.yaml",
    "serving.kserve.io_clusterservingruntimes.yaml",
    "serving.kserve.io_localmodelcaches.yaml",
}
MONITORING = {
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
}
BAD_PODMONITOR = """\
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: digits}
spec:
  selector: {matchLabels: {app: digits}}
  podMetricsEndpoints:
    - port: metrics
      interval: 15
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("kbundle-*.whl")
    return built


def test_every_crd_with_source_and_licence_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for group, files in (("kserve", KSERVE), ("monitoring", MONITORING)):
        for name in files | {"SOURCE", "LICENSE"}:
            assert f"kbundle/manifests/crds/{group}/{name}" in names, (group, name)


def test_the_checkout_holds_the_same_crds():
    """A missing packaged CRD fails here (not a skip), before any validate test can pass."""
    for group, files in (("kserve", KSERVE), ("monitoring", MONITORING)):
        folder = crds_module.packaged_dir(group)
        assert files | {"SOURCE", "LICENSE"} <= {p.name for p in folder.iterdir()}, folder
        assert "Apache-2.0" in (folder / "SOURCE").read_text()


def test_validate_from_the_installed_wheel_in_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "digits.yaml").write_bytes((SAMPLES / "digits.yaml").read_bytes())
    (work / "podmonitor.yaml").write_text(BAD_PODMONITOR)
    code = "import sys; from kbundle.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(site), "KBUNDLE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-P", "-c", code, "validate", "--no-cluster", "digits.yaml", "."],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert f"packaged kserve CRDs ({site}" in out, out
    assert f"packaged monitoring CRDs ({site}" in out, out
    assert "podmonitor.yaml:8: error [PodMonitor/digits]" in out, out
    assert "interval" in out and result.returncode == 1, out
    assert str(REPO) not in out
