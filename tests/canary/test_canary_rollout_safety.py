"""Rollout safety without servers: a failing analysis stops with one line and keeps the state;
an edit made by someone else meanwhile is never overwritten (the rollout refuses in one line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kbundle.commands.canary_rollout_state import state_path

SAMPLES = Path(__file__).parents[2] / "inferenceservices"


def _rollout(path: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kbundle.cli", "canary", "rollout", str(path)]
    cmd += ["--state-dir", str(tmp / "no-up"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_unreachable_prometheus_stops_with_one_line_and_keeps_the_state(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_bytes((SAMPLES / "digits.yaml").read_bytes())
    args = ["--storage-uri", "s3://kbundle-models/digits/v2", "--steps", "10,50"]
    args += ["--interval", "1s", "--prometheus", "http://127.0.0.1:9"]
    result = _rollout(path, tmp_path, *args)
    assert result.returncode == 1
    assert (
        result.stderr.startswith("error: cannot reach Prometheus")
        and result.stderr.count("\n") == 1
    )
    assert "canaryTrafficPercent: 10" in path.read_text() and state_path(path).is_file()

    path.write_text(path.read_text() + "# someone else's edit\n")
    edited = path.read_bytes()
    abort = _rollout(path, tmp_path, "--abort")
    assert abort.returncode == 1 and "changed since the rollout last wrote it" in abort.stderr
    assert abort.stderr.count("\n") == 1 and path.read_bytes() == edited
    accepted = _rollout(path, tmp_path, "--abort", "--accept-edits")
    assert accepted.returncode == 0, accepted.stderr
    text = path.read_text()
    assert "canaryTrafficPercent: 0" in text and text.endswith("# someone else's edit\n")
    assert not state_path(path).exists()


def test_a_different_rollout_is_refused_while_one_is_in_progress(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_bytes((SAMPLES / "digits.yaml").read_bytes())
    dead = ["--interval", "1s", "--prometheus", "http://127.0.0.1:9"]
    assert _rollout(path, tmp_path, "--storage-uri", "s3://a/b", *dead).returncode == 1
    other = _rollout(path, tmp_path, "--storage-uri", "s3://x/y", *dead)
    assert other.returncode == 1 and "is in progress" in other.stderr
