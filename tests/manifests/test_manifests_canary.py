"""`kbundle canary` edits: only the intended lines change, every other byte stays, writes are atomic.

Round trips compare against the original bytes; the CLI runs as a real subprocess for the
write/dry-run/failure cases (the failed write is a real EFBIG from a file-size rlimit).
"""

from __future__ import annotations

import difflib
import os
import resource
import signal
import stat
from pathlib import Path

import manifest_helpers
import pytest
from manifest_helpers import SAMPLES, run_cli

from kbundle.manifests import canary
from kbundle.manifests.canary import CanaryError
from kbundle.manifests.check import validate_paths

crds = manifest_helpers.crds  # fixture (assigned, so function arguments may shadow it)
KNATIVE_CANARY = SAMPLES / "digits-canary.yaml"
KNATIVE_PLAIN = SAMPLES / "digits.yaml"
STANDARD = SAMPLES / "digits-canary-standard.yaml"


def _changes(old: str, new: str) -> list[tuple[str, list[str], list[str]]]:
    """(tag, old lines, new lines) for every non-equal block between the two texts."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return [(tag, a[i1:i2], b[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def _valid(tmp_path: Path, crds, text: str) -> None:
    path = tmp_path / "edited.yaml"
    path.write_text(text)
    report = validate_paths([path], crds)
    assert report.errors == [], [f.format() for f in report.errors]


def test_knative_set_changes_one_line_and_round_trips(tmp_path, crds):
    old = KNATIVE_CANARY.read_text()
    plan = canary.set_canary(KNATIVE_CANARY, old, 50)
    [(tag, before, after)] = _changes(old, plan.new)
    assert tag == "replace" and before[0].replace("10", "50", 1) == after[0]
    assert "# v2 (this spec) gets 10%" in after[0]  # the trailing comment survives
    back = canary.set_canary(KNATIVE_CANARY, plan.new, 10)
    assert back.new == old  # byte-identical to the original
    _valid(tmp_path, crds, plan.new)


def test_knative_start_promote_and_rollback_on_a_plain_manifest(tmp_path, crds):
    old = KNATIVE_PLAIN.read_text()
    started = canary.set_canary(KNATIVE_PLAIN, old, 10, storage_uri="s3://kbundle-models/digits/v2")
    changes = _changes(old, started.new)
    assert [c[0] for c in changes] == ["insert", "replace"]
    assert changes[0][2] == ["    canaryTrafficPercent: 10\n"]
    assert changes[1][1] == ["            value: s3://kbundle-models/digits/v1\n"]
    assert changes[1][2] == ["            value: s3://kbundle-models/digits/v2\n"]
    _valid(tmp_path, crds, started.new)

    promoted = canary.promote(KNATIVE_PLAIN, started.new)
    assert promoted.new == old.replace(
        "digits/v1\n          - name: KBUNDLE_DEVICE",
        "digits/v2\n          - name: KBUNDLE_DEVICE",
        1,
    )
    rolled = canary.rollback(KNATIVE_PLAIN, started.new)
    assert _changes(started.new, rolled.new) == [
        ("replace", ["    canaryTrafficPercent: 10\n"], ["    canaryTrafficPercent: 0\n"])
    ]
    again = canary.promote(KNATIVE_PLAIN, promoted.new)
    assert not again.changed and "nothing to promote" in again.notes[0]


def test_standard_mode_edits_spec_canary(tmp_path, crds):
    old = STANDARD.read_text()
    widened = canary.set_canary(STANDARD, old, 30)
    [(_, before, after)] = _changes(old, widened.new)
    assert before == ["    - trafficPercent: 10 # share of requests for this candidate\n"]
    assert after == ["    - trafficPercent: 30 # share of requests for this candidate\n"]
    assert "canaryTrafficPercent:" not in widened.new  # Standard mode ignores that field
    rolled = canary.rollback(STANDARD, old)
    assert [c[2] for c in _changes(old, rolled.new)] == [
        ["    - trafficPercent: 0 # share of requests for this candidate\n"]
    ]

    promoted = canary.promote(STANDARD, old)
    changes = _changes(old, promoted.new)
    assert changes[0] == (
        "replace",
        ["            value: s3://kbundle-models/digits/v1\n"],
        ["            value: s3://kbundle-models/digits/v2\n"],
    )
    assert changes[1][0] == "delete" and changes[1][1][0] == "  canary:\n" and len(changes) == 2
    assert "  transformer:\n" in promoted.new
    _valid(tmp_path, crds, promoted.new)

    # A new candidate on the promoted file: spec.canary[] is created from the predictor's text.
    created = canary.set_canary(
        STANDARD, promoted.new, 20, storage_uri="s3://kbundle-models/digits/v3", canary_name="v3"
    )
    assert all(c[0] == "insert" for c in _changes(promoted.new, created.new))
    assert "        name: v3\n" in created.new and "digits/v3" in created.new
    _valid(tmp_path, crds, created.new)


MULTI = (
    "# two services and a config map in one file\r\n"
    "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata:\r\n  name: settings\r\ndata:\r\n  k: v\r\n"
    "---\r\n"
    "apiVersion: serving.kserve.io/v1beta1\r\nkind: InferenceService\r\nmetadata:\r\n  name: a\r\n"
    "spec:\r\n  predictor:\r\n    canaryTrafficPercent: 5\r\n    model:\r\n"
    '      modelFormat: {name: onnx}\r\n      storageUri: "s3://b/a/v2"\r\n'
    "---\r\n"
    "# service b keeps its quoting and comments\r\n"
    "apiVersion: serving.kserve.io/v1beta1\r\nkind: InferenceService\r\nmetadata:\r\n  name: b\r\n"
    "spec:\r\n  predictor:   # the predictor\r\n"
    "    # a comment before the first key\r\n"
    "    model:\r\n      modelFormat:\r\n        name: onnx\r\n"
    "      storageUri: 's3://b/b/v1'   # quoted on purpose\r\n"
)


def test_multi_document_edits_only_the_named_service(tmp_path):
    path = tmp_path / "multi.yaml"
    with pytest.raises(CanaryError, match="2 InferenceServices \\(a, b\\); choose one with --name"):
        canary.set_canary(path, MULTI, 10)
    plan = canary.set_canary(path, MULTI, 25, storage_uri="s3://b/b/v2", name="b")
    changes = _changes(MULTI, plan.new)
    assert changes == [
        ("insert", [], ["    canaryTrafficPercent: 25\r\n"]),
        (
            "replace",
            ["      storageUri: 's3://b/b/v1'   # quoted on purpose\r\n"],
            ["      storageUri: 's3://b/b/v2'   # quoted on purpose\r\n"],
        ),
    ]
    assert plan.new.index("canaryTrafficPercent: 25") < plan.new.index(
        "# a comment before the first key"
    )
    promoted_a = canary.promote(path, MULTI, name="a")
    assert _changes(MULTI, promoted_a.new) == [("delete", ["    canaryTrafficPercent: 5\r\n"], [])]


@pytest.mark.parametrize(
    ("text", "call", "message"),
    [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            lambda p, t: canary.set_canary(p, t, 10),
            "no InferenceService to edit \\(found: ConfigMap/x\\)",
        ),
        (
            MULTI,
            lambda p, t: canary.set_canary(p, t, 101, name="a"),
            "--percent must be an integer from 0 to 100",
        ),
        (
            MULTI,
            lambda p, t: canary.set_canary(p, t, -1, name="a"),
            "--percent must be an integer from 0 to 100",
        ),
        (
            MULTI,
            lambda p, t: canary.set_canary(p, t, 10, name="zzz"),
            "no InferenceService named 'zzz'",
        ),
        (
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: f}\n"
            "spec:\n  predictor: {model: {modelFormat: {name: onnx}, storageUri: 's3://b/f'}}\n",
            lambda p, t: canary.set_canary(p, t, 10),
            "flow style",
        ),
        (
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: m\n  annotations:\n"
            "    serving.kserve.io/deploymentMode: ModelMesh\nspec:\n  predictor:\n    model:\n"
            "      modelFormat: {name: onnx}\n",
            lambda p, t: canary.rollback(p, t),
            "ModelMesh mode has no canary",
        ),
        (
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: s\n  annotations:\n"
            "    serving.kserve.io/deploymentMode: RawDeployment\nspec:\n  predictor:\n    model:\n"
            "      modelFormat: {name: onnx}\n      storageUri: s3://b/s\n",
            lambda p, t: canary.set_canary(p, t, 10),
            "no spec.canary\\[\\] entry yet; give --storage-uri",
        ),
        (
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: s\nspec:\n"
            "  predictor:\n    model:\n      modelFormat: {name: onnx}\n      storageUri: >-\n        s3://b/s\n",
            lambda p, t: canary.set_canary(p, t, 10, storage_uri="s3://b/t"),
            "block scalars",
        ),
        (
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: s\nspec:\n"
            "  predictor:\n    model:\n      modelFormat: {name: onnx}\n      storageUri: s3://b/s\n        /more\n",
            lambda p, t: canary.set_canary(p, t, 10, storage_uri="s3://b/t"),
            "multi-line plain value",
        ),
    ],
)
def test_refusals_name_the_reason(tmp_path, text, call, message):
    with pytest.raises(CanaryError, match=message):
        call(tmp_path / "x.yaml", text)


def test_cli_writes_atomically_and_keeps_the_mode(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(KNATIVE_CANARY.read_text())
    os.chmod(path, 0o640)
    result = run_cli("canary", "set", str(path), "--percent", "40")
    assert result.returncode == 0, result.stderr
    assert "canaryTrafficPercent: 40 #" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.yaml"]  # no temp files left


def test_cli_dry_run_prints_the_diff_and_writes_nothing(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(KNATIVE_CANARY.read_text())
    result = run_cli("canary", "promote", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "-    canaryTrafficPercent: 10" in result.stdout and result.stdout.startswith("--- ")
    assert path.read_text() == KNATIVE_CANARY.read_text()


def test_cli_refuses_with_exit_1_and_a_message(tmp_path):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    result = run_cli("canary", "rollback", str(path))
    assert result.returncode == 1 and "no InferenceService to edit" in result.stderr
    bad_percent = run_cli("canary", "set", str(path), "--percent", "150")
    assert bad_percent.returncode == 2 and "from 0 to 100" in bad_percent.stderr


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_failed_write_leaves_the_original_untouched(tmp_path):
    """A real write failure (EFBIG from RLIMIT_FSIZE, works even as root) mid-way through the
    temp file: the original bytes stay and no temp file is left behind."""
    path = tmp_path / "digits.yaml"
    original = KNATIVE_CANARY.read_bytes()
    path.write_bytes(original)
    result = run_cli(
        "canary", "set", str(path), "--percent", "60", preexec_fn=_limit_file_size(1024)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "left unchanged" in result.stderr
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.yaml"]


def test_read_only_folder_leaves_the_original_untouched(tmp_path):
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: directory permissions do not stop root (the rlimit test covers this)"
        )
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "digits.yaml"
    path.write_bytes(KNATIVE_CANARY.read_bytes())
    os.chmod(folder, 0o555)
    try:
        result = run_cli("canary", "set", str(path), "--percent", "60")
    finally:
        os.chmod(folder, 0o755)
    assert result.returncode == 1 and path.read_bytes() == KNATIVE_CANARY.read_bytes()


ISVC_SAMPLES = [
    p for p in sorted(SAMPLES.glob("*.yaml")) if "kind: InferenceService" in p.read_text()
]


@pytest.mark.parametrize("sample", ISVC_SAMPLES, ids=lambda p: p.name)
def test_every_sample_survives_set_rollback_promote(tmp_path, crds, sample):
    """On every shipped manifest each operation keeps the file valid, and reading the changed
    lines back shows only canary fields, storage URIs or the removed canary block moved."""
    text = sample.read_text()
    for step in (
        lambda t: canary.set_canary(sample, t, 35, storage_uri="s3://kbundle-models/digits/v9"),
        lambda t: canary.rollback(sample, t),
        lambda t: canary.promote(sample, t),
    ):
        new = step(text).new
        _valid(tmp_path, crds, new)
        for _, before, after in _changes(text, new):
            touched = "".join(before + after)
            assert (
                "raffic" in touched or "kbundle-models/digits" in touched or "  canary:" in touched
            ), touched
        text = new


def test_verification_refuses_stray_or_wrong_changes(tmp_path):
    """The safety net behind every edit: a change outside the touched fields, a value that does
    not read back as intended, or a rewritten key is refused."""
    from kbundle.manifests.canary_steps import EditCtx, verify

    path = tmp_path / "m.yaml"
    old = MULTI.replace("\r\n", "\n")
    touched = ("spec", "predictor", "canaryTrafficPercent")
    ctx = EditCtx(path, doc_index=1, touched=[touched], expected={touched: 50})
    verify(path, old, old.replace("canaryTrafficPercent: 5", "canaryTrafficPercent: 50"), ctx)
    with pytest.raises(CanaryError, match="would also change spec.predictor.model.storageUri"):
        verify(path, old, old.replace("5\n", "50\n").replace("b/a/v2", "b/a/v3"), ctx)
    with pytest.raises(CanaryError, match="reads back as 51, not 50"):
        verify(path, old, old.replace("canaryTrafficPercent: 5", "canaryTrafficPercent: 51"), ctx)
    with pytest.raises(CanaryError, match="would also change"):
        verify(path, old, old.replace("  name: settings", "  name: other"), ctx)
