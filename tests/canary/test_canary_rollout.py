"""`kbundle canary rollout` against a real `kbundle up` (and a real Prometheus), under steady
traffic from a background client. One `kbundle up` for the module; the tests run in order:
good candidate promoted (Prometheus) -> bad candidate rolled back at the first step (local
figures) -> SIGINT in a bake, rerun resumes -> a second rollout refused, --abort rolls back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from test_canary_prometheus import BUCKET, cli, models  # noqa: F401  (module fixture)

sys.path.insert(0, str(Path(__file__).parents[1] / "up"))
from prom_harness import start_prometheus, wait_for_series  # noqa: E402
from up_harness import HERE as UP_HERE  # noqa: E402
from up_harness import digits_rows, kbundle_cmd, start_up, wait_for  # noqa: E402

from kbundle.commands.canary_rollout_state import state_path  # noqa: E402
from kbundle.manifests import canary  # noqa: E402

FAST = ["--interval", "5s", "--min-requests", "30", "--warmup", "1s"]


class Traffic(threading.Thread):
    """Single-row requests through the ingress, back to back, until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop_flag, self.sent = url, threading.Event(), 0

    def run(self) -> None:
        rows, _ = digits_rows(100, seed=5)
        with requests.Session() as session:
            while not self.stop_flag.is_set():
                row = rows[self.sent % len(rows)]
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}
                body["inputs"][0]["data"] = row.tolist()
                try:
                    session.post(self.url, json=body, timeout=30)
                except requests.RequestException:
                    time.sleep(0.05)
                self.sent += 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models: Path):  # noqa: F811
    tmp = tmp_path_factory.mktemp("rollout")
    src = tmp / "src.yaml"
    src.write_text(
        (UP_HERE / "digits-custom.yaml").read_text().replace("s3://kbundle-models/digits", BUCKET)
    )
    up = start_up(src, tmp, "--storage-map", f"s3://canary-test={models}")
    prom = start_prometheus(tmp, next(up.state_root.rglob("prometheus-targets.json")))
    traffic = Traffic(f"http://{up.rest_url}/v2/models/digits/infer")
    traffic.start()
    yield up, prom
    traffic.stop_flag.set()
    traffic.join(10)
    prom.stop()
    up.stop()


def rollout(up, *args: str) -> list[str]:
    return kbundle_cmd(
        "canary", "rollout", str(up.manifest), "--state-dir", str(up.state_root), *args
    )


def test_good_candidate_goes_10_50_promoted_byte_equal_to_promote(stack):
    up, prom = stack
    wait_for_series(prom, 'revision_app_request_count{isvc="digits"}')
    original = up.manifest.read_text()
    uri = f"{BUCKET}/v2"
    cmd = rollout(up, "--storage-uri", uri, "--steps", "10,50", "--prometheus", prom.url, *FAST)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollout promoted" in done.stdout
    table = done.stdout.split("decision\n", 1)[1].splitlines()
    steps = [(row.split()[1], row.split(None, 6)[-1]) for row in table if row.strip()]
    assert [s for s in steps if s[1] != "hold"] == [("10%", "promote"), ("50%", "promote")], steps
    expected = canary.set_canary(up.manifest, original, 50, storage_uri=uri).new
    expected = canary.promote(up.manifest, expected).new
    assert up.manifest.read_text() == expected
    assert not state_path(up.manifest).exists()


def test_bad_candidate_is_rolled_back_at_the_first_step(stack):
    up, _ = stack
    cmd = rollout(up, "--storage-uri", f"{BUCKET}/failing", "--steps", "10,50", *FAST)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "rollout rolled back" in done.stdout and "error rate" in done.stdout
    table = done.stdout.split("decision\n", 1)[1].splitlines()
    assert table[-1].split()[1] == "10%" and table[-1].endswith("roll back"), table
    assert all(row.endswith("hold") for row in table[:-1]), table
    assert "canaryTrafficPercent: 0" in up.manifest.read_text()
    wait_for(lambda: up.status()["revisions"][0]["traffic"] in (0, 100), 30, "rolled back", up)


def test_sigint_in_a_bake_then_rerun_resumes(stack):
    up, _ = stack
    cmd = rollout(up, "--storage-uri", f"{BUCKET}/v1", "--steps", "10,50", *FAST)
    # started as a non-interactive shell's background job is: SIGINT inherited ignored
    ignoring = ["bash", "-c", 'trap "" INT; exec "$@"', "_", *cmd]
    first = subprocess.Popen(ignoring, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _edited(up) == 0, 120, "first step live")
    time.sleep(1)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "run the same command to resume" in err, out + err
    assert _edited(up) == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(again.stdout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming at step 1 of 2" in again.stdout and "rollout promoted" in again.stdout
    assert "kbundle-models" not in up.manifest.read_text()
    assert f"{BUCKET}/v1" in up.manifest.read_text()


def test_second_rollout_refused_then_abort_rolls_back(stack):
    up, _ = stack
    cmd = rollout(up, "--storage-uri", f"{BUCKET}/slow", "--steps", "10", "--interval", "60s")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _edited(up) == 0, 120, "first step live")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "another `kbundle canary rollout`" in second.stderr
    first.send_signal(signal.SIGTERM)  # a cancelled CI job: stops like SIGINT, state kept
    _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM and "run the same command to resume" in err
    abort = subprocess.run(rollout(up, "--abort"), capture_output=True, text=True, timeout=120)
    assert abort.returncode == 0 and "aborted (rolled back)" in abort.stdout, abort.stderr
    assert "canaryTrafficPercent: 0" in up.manifest.read_text()
    assert not state_path(up.manifest).exists()
    latest = next(r for r in up.status()["revisions"] if r["tag"] == "latest")
    assert latest["traffic"] == 0
    again = subprocess.run(rollout(up, "--abort"), capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no rollout in progress" in again.stderr


def _edited(up) -> int | None:
    path = state_path(up.manifest)
    try:
        return json.loads(path.read_text())["edited_step"]
    except (OSError, ValueError):
        return None
