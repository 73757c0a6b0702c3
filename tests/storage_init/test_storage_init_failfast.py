"""Fail fast and say why: permanent errors exit at once with their own code, transient ones are
retried within the deadline and end with the transient code (real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from storage_sandbox import Sandbox, install_model
from storage_servers import tree


def timed(sandbox: Sandbox, *args: str, env: dict[str, str] | None = None):
    start = time.monotonic()
    result = sandbox.run(*args, env=env)
    return result, time.monotonic() - start


def fetch_to_exit_s(log: str) -> float:
    """Seconds from the 'fetching' line to the failure line, by the log's own timestamps."""
    stamps = re.findall(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) ", log, re.M)
    first, last = (
        int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
        for h, m, s, ms in (stamps[0], stamps[-1])
    )
    return last - first


@pytest.mark.parametrize(
    ("code", "exit_code", "kind", "fix"),
    [
        (404, 10, "not-found", "Check the URI"),
        (410, 10, "not-found", "Check the URI"),
        (403, 11, "access-denied", "-headers"),
        (401, 11, "access-denied", "-headers"),
        (400, 15, "source-refused", "Check the URL"),
    ],
)
def test_permanent_http_errors_exit_at_once_with_their_code(
    sandbox: Sandbox, http_server, digits_v1: Path, code: int, exit_code: int, kind: str, fix: str
) -> None:
    install_model(digits_v1, sandbox.dest)
    before = tree(sandbox.dest)
    path = f"/fail/{code}/model-{code}.tar.gz"
    result, wall = timed(sandbox, f"{http_server.url}{path}", str(sandbox.dest))
    assert result.rc == exit_code, result.log
    line = result.last_line
    assert f"(exit {exit_code}, {kind})" in line and f"HTTP {code}" in line and fix in line, line
    assert f"{http_server.url}{path}" in line  # the line names the URI
    assert http_server.hits[path] == 1  # no retry of a permanent error
    assert "retrying" not in result.log
    assert fetch_to_exit_s(result.log) < 1.0
    print(f"HTTP {code}: exit {result.rc} after {wall:.2f} s wall (interpreter start included)")
    assert tree(sandbox.dest) == before


def test_404_exits_within_a_second(sandbox: Sandbox, http_server) -> None:
    """Wall clock of the whole process, start-up included (a usage error measures start-up alone)."""
    startup, startup_wall = timed(sandbox, "only-one-arg")
    assert startup.rc == 2
    result, wall = timed(sandbox, f"{http_server.url}/fail/404/m.onnx", str(sandbox.dest))
    assert result.rc == 10, result.log
    print(f"404 exit after {wall:.2f} s wall; interpreter start-up alone {startup_wall:.2f} s")
    assert wall < 1.0 or wall - startup_wall < 1.0, (wall, startup_wall)


def test_503_past_the_deadline_exits_with_the_transient_code(
    sandbox: Sandbox, http_server, digits_v1: Path
) -> None:
    install_model(digits_v1, sandbox.dest)
    before = tree(sandbox.dest)
    env = {"KBUNDLE_STORAGE_DEADLINE_S": "2", "KBUNDLE_STORAGE_RETRIES": "1000"}
    result, wall = timed(
        sandbox, f"{http_server.url}/fail/503/m.tar.gz", str(sandbox.dest), env=env
    )
    assert result.rc == 20, result.log
    line = result.last_line
    assert "(exit 20, transient)" in line and "deadline of 2.0 s reached" in line, line
    assert "HTTP 503" in line and "KBUNDLE_STORAGE_DEADLINE_S" in line
    attempts = http_server.hits["/fail/503/m.tar.gz"]
    assert attempts >= 3 and f"gave up after {attempts} attempts" in line
    assert fetch_to_exit_s(result.log) < 2.5  # back-off never sleeps past the deadline
    print(f"503 forever, deadline 2 s: {attempts} attempts, exit 20 after {wall:.2f} s wall")
    assert tree(sandbox.dest) == before


def test_hung_transfer_is_cut_at_the_deadline(sandbox: Sandbox, http_server) -> None:
    """The per-request read timeout (60 s) is shortened to what is left of the deadline."""
    env = {"KBUNDLE_STORAGE_DEADLINE_S": "1.5", "KBUNDLE_STORAGE_RETRIES": "1000"}
    result, wall = timed(sandbox, f"{http_server.url}/stall/m.onnx", str(sandbox.dest), env=env)
    assert result.rc == 20, result.log
    assert "timed out" in result.last_line.lower() or "Timeout" in result.last_line
    assert fetch_to_exit_s(result.log) < 3.0


def test_failure_line_goes_to_the_termination_log(sandbox: Sandbox, http_server) -> None:
    """Kubernetes shows /dev/termination-log in the pod status; the line lands there too."""
    term = sandbox.root / "termination-log"
    term.write_text("")
    env = {"KBUNDLE_STORAGE_TERMINATION_LOG": str(term)}
    result = sandbox.run(f"{http_server.url}/fail/403/m.onnx", str(sandbox.dest), env=env)
    assert result.rc == 11
    assert term.read_text().strip() == result.last_line.split(" ERROR ", 1)[1]


def test_non_utf8_sha256sums_is_one_clear_line(
    sandbox: Sandbox, digits_v1: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    install_model(digits_v1, src)
    (src / "SHA256SUMS").write_bytes(b"\xff\xfe" + b"0" * 64 + b"  model.onnx\n")
    result = sandbox.run(str(src), str(sandbox.dest))
    assert result.rc == 12, result.log
    assert "SHA256SUMS is not UTF-8 text (byte 0 is b'\\xff')" in result.last_line
    assert "unexpected" not in result.log and "Traceback" not in result.log
    assert result.log.count("storage-init failed") == 1
