"""The GPU-engines benchmark runs end to end on CPU (a smoke run: tiny model, raw engines only),
so the script cannot rot between the GPU sessions that produce its real figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the torch extra is not installed")
BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_engines.py"


def test_benchmark_smoke_run_on_cpu_writes_labelled_results(tmp_path: Path) -> None:
    stem = tmp_path / "smoke"
    args = [
        "--device",
        "cpu",
        "--seconds",
        "0.05",
        "--batches",
        "1,4",
        "--precisions",
        "fp32",
        "--width",
        "16",
        "--depth",
        "1",
        "--threads",
        "1",
        "--no-served",
        "--out",
        str(stem),
    ]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(stem.with_suffix(".json").read_text())
    assert result["device"].startswith("CPU ") and result["device_kind"] == "cpu"
    engines = {(r["engine"], r["batch"]) for r in result["rows"]}
    assert engines == {(e, b) for e in ("torch-eager", "torch-export", "ort-cpu") for b in (1, 4)}
    assert all(r["rows_per_s"] > 0 and r["mode"] == "raw" for r in result["rows"])
    assert any("torch-aoti" in s for s in result["skipped"])  # skipped engines are listed, with why
    assert "| torch-export | fp32 | raw | 4 |" in stem.with_suffix(".md").read_text()
