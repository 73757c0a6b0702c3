"""The GPU-engines benchmark's results: one measured row, the device's name, the latency summary,
and the JSON and Markdown files written from them (bench/gpu_engines.py measures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from machine import cpu_model

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    engine: str
    precision: str
    mode: str  # raw | served
    batch: int
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU {cpu_model()}, {os.cpu_count()} cores visible"


def summarize(latencies: list[float], rows: int, wall: float) -> tuple[float, float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        len(ordered) / wall,
        len(ordered) * rows / wall,
        statistics.median(ordered) * 1e3,
        p99 * 1e3,
    )


def write_results(
    args: argparse.Namespace, device: str, rows: list[Row], skipped: list[str]
) -> None:
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = Path(args.out) if args.out else RESULTS / f"gpu_engines-{args.device}"
    meta = {
        "device": device,
        "device_kind": args.device,
        "torch": torch.__version__,
        "model": f"digits MLP 64-{args.width}x{args.depth}-10",
        "seconds_per_point": args.seconds,
        "threads": args.threads or "library default",
        "command": "python bench/gpu_engines.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # A shared machine's other load skews every figure: recorded so readers can tell.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "skipped": skipped,
    }
    stem.with_suffix(".json").write_text(
        json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    lines = [
        f"# GPU engines benchmark — {device}",
        "",
        *(f"- {k}: `{v}`" for k, v in meta.items() if k != "skipped"),
        *(f"- skipped: {s}" for s in skipped),
        "",
        "| engine | precision | mode | batch | concurrency | req/s | rows/s | p50 ms | p99 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.engine} | {r.precision} | {r.mode} | {r.batch} | {r.concurrency} | {r.requests_per_s:.0f} | "
            f"{r.rows_per_s:.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} |"
            for r in rows
        ),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
