"""Hostile manifests (the CVE-2019-11253 class): each is one line, exit 1, under 2 s and 200 MB,
for `kbundle validate`, `kbundle canary set` and `kbundle up` (real subprocesses; memory is the
child's own peak RSS and time its CPU seconds, both from wait4 in a small launcher: the wall clock of a shared
2-core machine measures the neighbours, so it only has a loose bound of 10 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbundle.manifests import yamlguard

HEAD = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: digits\n"


def _billion_laughs() -> str:
    lines = ['  lol0: &l0 "lol"']
    lines += [f"  lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    return HEAD + "spec:\n" + "\n".join(lines) + "\n"


def _deep_block() -> str:
    return HEAD + "spec:\n" + "- " * 10_000 + "x\n"  # block sequences, 10,000 deep


HOSTILE = {
    "alias-bomb": (_billion_laughs(), "alias bomb is refused"),
    "deep-flow": (HEAD + "spec: " + "[" * 10_000 + "]" * 10_000 + "\n", "nesting"),
    "deep-block": (_deep_block(), "nesting deeper than 100 levels"),
    "nul": (HEAD + "  namespace: a\x00b\n", "NUL character"),
    "huge-int": (
        HEAD + "spec:\n  predictor:\n    minReplicas: " + "9" * 5001 + "\n",
        "5001 digits",
    ),
    "oversized": (HEAD + "# " + "x" * yamlguard.MAX_BYTES + "\n", "limited to"),
}
COMMANDS = {
    "validate": ["validate", "--no-cluster"],
    "canary": ["canary", "set", "--percent", "10"],
    "up": ["up", "--watch-interval", "0"],
}


# A child forked from this (large) pytest process inherits its peak RSS in ru_maxrss, so the
# command runs under a small launcher whose own child is measured: a fresh process's peak.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss * 1024}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run(argv: list[str], cwd: Path) -> tuple[int, str, float, float, int]:
    """(exit code, output, wall s, CPU s, peak RSS bytes) of `kbundle ARGV` in a subprocess."""
    env = {**os.environ, "KBUNDLE_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
    usage_file = cwd / "usage.txt"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(usage_file), "-m", "kbundle.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cpu, rss = usage_file.read_text().split()
    return proc.returncode, proc.stdout, time.monotonic() - start, float(cpu), int(rss)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_manifest_is_one_line_exit_1_fast_and_small(tmp_path, case, command):
    text, expected = HOSTILE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    if command == "validate":  # the cached CRDs are parsed once, outside the timed run
        _run([*COMMANDS[command], os.devnull], tmp_path)
    argv = [*COMMANDS[command], path.name]
    if command == "up":
        argv += ["--state-dir", str(tmp_path / "state")]
    code, out, wall, cpu, rss = _run(argv, tmp_path)
    # one finding line (validate adds its usual "N object(s) checked ... 1 error(s)" tally)
    lines = [line for line in out.splitlines() if "checked against" not in line]
    assert code == 1, out
    assert "Traceback" not in out and len(lines) == 1 and expected in lines[0], out
    assert f"{path.name}:" in lines[0] and "error" in lines[0], out
    assert cpu < 2.0 and wall < 10.0, f"{cpu:.2f} s CPU, {wall:.2f} s wall"
    assert rss < 200 * 2**20, f"{rss / 2**20:.0f} MB"
    assert path.read_text() == text  # canary set left the file alone


def test_anchors_within_the_limits_still_load(tmp_path):
    """A manifest that reuses a block with an anchor (common in Helm output) is not refused."""
    from kbundle.manifests.documents import load_text, to_plain

    text = (
        HEAD + "spec:\n  a: &env [{name: A, value: '1'}]\n  b: *env\n  count: 9223372036854775807\n"
    )
    [doc] = load_text(tmp_path / "ok.yaml", text)
    assert to_plain(doc.data)["spec"]["b"] == [{"name": "A", "value": "1"}]
    assert to_plain(doc.data)["spec"]["count"] == 2**63 - 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 9223372036854775808\n", "does not fit 64 bits"),
        ("a: -9223372036854775809\n", "does not fit 64 bits"),
        ("a: &x [1, 2]\n" + "".join(f"b{i}: *x\n" for i in range(4000)), "alias bomb"),
    ],
)
def test_limits_are_exact(text, message):
    with pytest.raises(yamlguard.YamlLimitError, match=message):
        yamlguard.check_text(text)
    yamlguard.check_text('a: "9223372036854775808"\nb: -9223372036854775808\n')


@pytest.mark.parametrize("command", ["validate", "up"])
def test_an_endless_file_is_read_only_up_to_the_limit(tmp_path, command):
    argv = [*COMMANDS[command], "/dev/zero"]
    if command == "up":
        argv += ["--state-dir", str(tmp_path / "state")]
    code, out, wall, cpu, rss = _run(argv, tmp_path)
    assert "/dev/zero:1:" in out, out
    assert code == 1 and "limited to" in out and "Traceback" not in out, out
    assert cpu < 2.0 and rss < 200 * 2**20, (cpu, rss)
