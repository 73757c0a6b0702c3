"""Canary edits are safe against each other: compare-before-write under a lock, links followed,
anchors refused in one line, and no rollback when there is no canary. Real files, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kbundle.atomic import FileChanged, atomic_write, read_with_digest

SAMPLES = Path(__file__).parents[2] / "inferenceservices"


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kbundle.cli", "canary", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_writers_from_one_read_one_wins_the_other_gets_file_changed(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("a: 1\n")
    _, seen = read_with_digest(path)
    barrier, results = threading.Barrier(2), {}

    def write(tag: str) -> None:
        barrier.wait()
        try:
            atomic_write(path, f"a: {tag}\n", expect_digest=seen)
            results[tag] = "ok"
        except FileChanged as exc:
            results[tag] = str(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values())[-1] == "ok"
    loser = sorted(results.values())[0]
    assert "changed since it was read" in loser, results
    winner = next(k for k, v in results.items() if v == "ok")
    assert path.read_text() == f"a: {winner}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]  # no temp or lock files


def test_concurrent_canary_set_never_loses_an_edit_silently(tmp_path):
    """Two real `canary set` processes at once, 12 times: either both edits are in the file (they
    ran one after the other) or one exits 1 saying the file changed. Never both 0 and one lost."""
    refused = 0
    for i in range(12):
        path = tmp_path / f"digits-{i}.yaml"
        path.write_bytes((SAMPLES / "digits.yaml").read_bytes())
        a = _cli("set", str(path), "--percent", "10", "--storage-uri", "s3://kbundle-models/a")
        b = _cli("set", str(path), "--percent", "10", "--image", "example.org/pred:b")
        outs = [(p.wait(60), *p.communicate()) for p in (a, b)]
        text = path.read_text()
        codes = sorted(o[0] for o in outs)
        if codes == [0, 0]:
            assert "kbundle-models/a" in text and "example.org/pred:b" in text, text
        else:
            assert codes == [0, 1], outs
            loser = next(o for o in outs if o[0] == 1)
            assert "changed since it was read" in loser[2] and loser[2].count("\n") == 1
            refused += 1
    print(f"refused {refused} of 12 overlapping runs")


def test_set_on_a_symlink_edits_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real" / "digits.yaml"
    real.parent.mkdir()
    real.write_bytes((SAMPLES / "digits.yaml").read_bytes())
    link = tmp_path / "digits.yaml"
    link.symlink_to(real)
    proc = _cli("set", str(link), "--percent", "25")
    assert proc.wait(60) == 0, proc.communicate()
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "canaryTrafficPercent: 25" in real.read_text()


ANCHORED = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: digits
  labels: &labels
    app: digits
spec:
  predictor:
    labels: *labels
    model:
      modelFormat:
        name: onnx
      storageUri: &uri s3://kbundle-models/digits/v1
  transformer:
    containers:
      - name: kserve-container
        image: example.org/t:1
        env:
          - name: STORAGE_URI
            value: *uri
"""


def test_anchored_manifest_is_edited_where_possible_and_refused_in_one_line_elsewhere(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(ANCHORED)
    ok = _cli("set", str(path), "--percent", "10")
    assert ok.wait(60) == 0, ok.communicate()
    assert "&labels" in path.read_text() and "canaryTrafficPercent: 10" in path.read_text()
    before = path.read_bytes()
    refused = _cli("set", str(path), "--percent", "20", "--storage-uri", "s3://kbundle-models/b")
    assert refused.wait(60) == 1
    err = refused.communicate()[1]
    assert "not valid YAML" not in err and "anchor &uri" in err and err.count("\n") == 1, err
    assert path.read_bytes() == before


@pytest.mark.parametrize("sample", ["digits.yaml", "digits-canary.yaml"])
def test_rollback_after_promote_is_refused_and_changes_nothing(tmp_path, sample):
    path = tmp_path / sample
    path.write_bytes((SAMPLES / sample).read_bytes())
    promote = _cli("promote", str(path))
    assert promote.wait(60) == 0, promote.communicate()
    promoted = path.read_bytes()
    rollback = _cli("rollback", str(path))
    assert rollback.wait(60) == 1
    out, err = rollback.communicate()
    assert "no canary to roll back" in err and err.count("\n") == 1 and "done" not in out
    assert path.read_bytes() == promoted
