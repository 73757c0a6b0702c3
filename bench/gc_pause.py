"""What a full garbage collection costs the predictor's event loop, before and after
`kbundle.serving.lifecycle.freeze_startup_heap` (issue 12: refusals and deadline answers wait for
the loop, and a full collection stops it).

    python bench/gc_pause.py [--model mlp] [--repeats 7]

In one process pinned to one core, builds what the predictor holds when it starts serving: the
modules it imports (kserve, FastAPI, protobuf, ONNX Runtime), the loaded and warmed-up MLP
predictor, kserve's FastAPI app with our routes. Then times `gc.collect()` (a full, gen2
collection: what Python runs every few seconds under load) `--repeats` times, freezes the heap the
way the server does, and times it again. Writes bench/results/gc_pause.md (and .json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
from machine import cpu_model  # noqa: E402


def full_collections_ms(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return times


def build_serving_heap(model_dir: Path) -> object:
    """The predictor's start-up heap: its imports, the loaded model, kserve's app with routes."""
    from kserve.model_server import app

    from kbundle.predictors.__main__ import load_predictor, setup_process
    from kbundle.serving.rest_routes import register_error_handlers

    args = setup_process(["--model_name", "mlp", "--model_dir", str(model_dir)], "predictor")
    predictor = load_predictor(args)
    if isinstance(predictor, int):
        raise SystemExit(f"the model did not load (exit {predictor})")
    register_error_handlers(app)
    app.openapi()  # FastAPI builds its schema on first use; a served app has it
    return predictor, app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (-1: no pinning)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bench_models.mlp(Path(tmp) / "mlp" / "model.onnx").parent
        (model_dir / "kbundle.yaml").write_text("max_batch_size: 32\n")
        held = build_serving_heap(model_dir)
        tracked = len(gc.get_objects())
        before = full_collections_ms(args.repeats)
        gc.freeze()
        frozen = gc.get_freeze_count()
        after = full_collections_ms(args.repeats)
        del held
    result = {
        "command": "python bench/gc_pause.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "pinned_cpu": args.cpu,
        "objects_tracked": tracked,
        "objects_frozen": frozen,
        "full_collection_ms_before": [round(t, 2) for t in before],
        "full_collection_ms_after": [round(t, 2) for t in after],
        "median_before_ms": round(statistics.median(before), 2),
        "median_after_ms": round(statistics.median(after), 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gc_pause.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gc_pause.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    return "\n".join(
        [
            "# Full garbage collection over the predictor's start-up heap",
            "",
            f"`{r['command'].strip()}`; {r['machine']}; pinned to CPU {r['pinned_cpu']}.",
            "",
            "The heap: the predictor's imports, the loaded and warmed-up MLP predictor and kserve's "
            "FastAPI app with our routes, in one process. A full (gen2) collection stops the "
            "event loop for its whole length; under load Python runs one every few seconds.",
            "",
            "| | objects the collector walks | full collection, median ms | all runs, ms |",
            "|---|---:|---:|---|",
            f"| as started | {r['objects_tracked']:,} | {r['median_before_ms']} | "
            f"{', '.join(map(str, r['full_collection_ms_before']))} |",
            f"| after `gc.freeze()` (freeze_startup_heap) | "
            f"{r['objects_tracked'] - r['objects_frozen']:,} | {r['median_after_ms']} | "
            f"{', '.join(map(str, r['full_collection_ms_after']))} |",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
