"""storage-init figures for docs/storage-init.md: cold start first vs second run, 404, 503 past deadline.

`python bench/storage_init.py` runs the real initializer (a subprocess) against the test suite's local
HTTP server and writes bench/results/storage_init.{md,json}. The server and sandbox are the tests' own
(tests/storage_init), so the bench measures exactly what the tests check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "storage_init"))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from machine import cpu_model  # noqa: E402
from storage_sandbox import Sandbox  # noqa: E402
from storage_servers import ModelHTTPServer, big_block  # noqa: E402
from test_storage_init_skip import MB100, model_tar  # noqa: E402

RESULTS = HERE / "results"


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu_model()}), load average {load}"


def _sandbox(root: Path) -> Sandbox:
    (root / "dest").mkdir(parents=True)
    return Sandbox(root)


def _timed(sandbox: Sandbox, *args: str, env: dict[str, str] | None = None):
    start = time.monotonic()
    result = sandbox.run(*args, env=env)
    return result, time.monotonic() - start


def _peak_mib(log: str) -> float | None:
    """The `peak memory N MiB` the initializer logs on success (VmHWM since exec)."""
    found = re.search(r"peak memory ([0-9.]+) ?MiB", log)
    return float(found.group(1)) if found else None


def cold_start(root: Path, server: ModelHTTPServer) -> dict:
    weights = b"".join(big_block(i) for i in range(MB100 // len(big_block(0)) + 1))[:MB100]
    archive = model_tar(
        server.root / "model-100mb.tar", {"weights.bin": weights, "config.json": b"{}"}
    )
    del weights
    sandbox = _sandbox(root / "cold")
    url, path = f"{server.url}/files/{archive.name}", f"/files/{archive.name}"
    runs = []
    for _ in range(2):
        before = server.sent[path]
        result, wall = _timed(sandbox, url, str(sandbox.dest))
        if result.rc != 0:
            raise SystemExit(f"storage-init failed: {result.log}")
        runs.append(
            {
                "wall_s": wall,
                "bytes_served": server.sent[path] - before,
                "peak_mib": _peak_mib(result.log),
            }
        )
    return {"first": runs[0], "second": runs[1], "saved_s": runs[0]["wall_s"] - runs[1]["wall_s"]}


def failures(root: Path, server: ModelHTTPServer) -> dict:
    sandbox = _sandbox(root / "fail")
    startup, startup_wall = _timed(sandbox, "only-one-arg")
    missing, missing_wall = _timed(sandbox, f"{server.url}/fail/404/m.onnx", str(sandbox.dest))
    env = {"KBUNDLE_STORAGE_DEADLINE_S": "2", "KBUNDLE_STORAGE_RETRIES": "1000"}
    flaky, flaky_wall = _timed(sandbox, f"{server.url}/fail/503/m.onnx", str(sandbox.dest), env=env)
    return {
        "startup_s": startup_wall,
        "not_found": {"exit": missing.rc, "wall_s": missing_wall},
        "transient": {"exit": flaky.rc, "wall_s": flaky_wall, "deadline_s": 2},
    }


def write(figures: dict) -> None:
    cold, fail = figures["cold_start"], figures["failures"]
    rows = [
        "# storage-init: cold start and fail-fast",
        "",
        f"`python bench/storage_init.py`; {figures['machine']}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| 100 MB model (.tar with SHA256SUMS) over local HTTP, first run | {cold['first']['wall_s']:.2f} s, "
        f"{cold['first']['bytes_served']:,} bytes served, peak {cold['first']['peak_mib']} MiB |",
        f"| same source, second run (unchanged: skipped) | {cold['second']['wall_s']:.2f} s, "
        f"{cold['second']['bytes_served']:,} bytes served |",
        f"| cold start saved | {cold['saved_s']:.2f} s |",
        f"| interpreter start-up alone (usage error) | {fail['startup_s']:.2f} s |",
        f"| 404 | exit {fail['not_found']['exit']} after {fail['not_found']['wall_s']:.2f} s |",
        f"| 503 forever, deadline {fail['transient']['deadline_s']} s | exit {fail['transient']['exit']} "
        f"after {fail['transient']['wall_s']:.2f} s |",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storage_init.md").write_text("\n".join(rows))
    (RESULTS / "storage_init.json").write_text(json.dumps(figures, indent=2) + "\n")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        server = ModelHTTPServer(root / "www")
        try:
            figures = {"machine": machine_line(), "cold_start": cold_start(root, server)}
            figures["failures"] = failures(root, server)
        finally:
            server.stop()
    write(figures)
    print((RESULTS / "storage_init.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
