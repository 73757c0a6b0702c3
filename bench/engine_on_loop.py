"""Short batches on the event-loop thread vs always on the engine thread: one command, one core.

`.venv/bin/python bench/engine_on_loop.py [--rounds 6]` (perf_analyzer from the bench venv that
`bash bench/run.sh` makes) starts two kbundle predictors per model, both pinned to SERVER_CPU: one with
no flags (on one CPU it derives engine_on_loop_ms 0.5) and one with `--engine_on_loop_ms 0` (every
batch on the engine thread, as before). perf_analyzer, pinned to CLIENT_CPU, measures each cell
(model x protocol x concurrency) on both servers back to back, round after round, so both sides
see the same hour of this shared VM. Reported per cell: medians over rounds of infer/s and p50,
and the server's CPU per answered request (utime + stime from /proc over the perf_analyzer run,
divided by the requests it counted), which noise moves less than latency. Writes
bench/results/engine_on_loop.md and .json.

`--overload N` runs bench/overload.py instead, 2N times alternating, with KBUNDLE_ENGINE_ON_LOOP_MS
unset (derived) and =0 in the server's environment, and writes
bench/results/engine_on_loop_overload.md: goodput, refusal p99 and the server loop's lag per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_VENV = Path(os.environ.get("BENCH_VENV", HERE.parent / ".bench-venv"))

import models as bench_models  # noqa: E402
import run  # noqa: E402
from overload import server_cpu_s  # noqa: E402
from workers import bench_env  # noqa: E402

VARIANTS = {"loop": (), "thread": ("--engine_on_loop_ms", "0")}


def measure(args, model: str, server, protocol: str, concurrency: int) -> dict | None:
    proc, http, grpc, shape = server
    port = http if protocol == "http" else grpc
    rows_before, batches_before = run.batch_stats(http, model)
    before = server_cpu_s(proc.pid)
    result = run.perf_analyzer(args, model, port, protocol, concurrency, shape)
    spent = server_cpu_s(proc.pid) - before
    rows_after, batches_after = run.batch_stats(http, model)
    rows = rows_after - rows_before  # batch-1 requests: rows = requests
    if result is None or rows <= 0:
        return None
    batches = batches_after - batches_before
    return {**result, "cpu_us": spent / rows * 1e6, "mean_batch": rows / batches}


def interleaved(args, model: str, servers: dict, cells: dict, alternate: bool = False) -> None:
    """Round after round, every cell on every server back to back (so all see the same minutes
    of the VM); `alternate`: who goes first flips each round, so no side always follows."""
    for round_no in range(args.rounds):
        for protocol in args.protocols:
            for concurrency in args.concurrency:
                order = list(servers.items())
                if alternate and round_no % 2:
                    order.reverse()
                for name, server in order:
                    got = measure(args, model, server, protocol, concurrency)
                    if got is not None:
                        got["round"] = round_no
                        cells.setdefault((model, protocol, concurrency, name), []).append(got)
                    print(
                        f"round {round_no} {model} {protocol} c={concurrency} {name}: {got}",
                        flush=True,
                    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "mlp"])
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window-ms", type=int, default=1000)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--perf-analyzer", default=str(BENCH_VENV / "bin/perf_analyzer"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--overload", type=int, default=0, help="overload runs each way instead")
    args = parser.parse_args()
    if args.overload:
        return overload_pairs(args)
    os.environ.update(bench_env(BENCH_VENV))  # perf_analyzer's CUDA runtime library
    args.work = tempfile.mkdtemp(prefix="kbundle-on-loop-")
    models = bench_models.build_all(Path(args.work) / "models")
    before = run.machine()
    cells: dict[tuple, list[dict]] = {}
    for model in args.models:
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(
                    run.pinned_server(args, "kbundle", model, models[model], f"{name}.log", flags)
                )
                for name, flags in VARIANTS.items()
            }
            interleaved(args, model, servers, cells)
    write(args, before, run.machine(), cells)
    return 0


def overload_pairs(args) -> int:
    """bench/overload.py, alternating derived / off, its results kept per run."""
    work = Path(tempfile.mkdtemp(prefix="kbundle-on-loop-overload-"))
    before, runs = run.machine(), []
    for round_no in range(args.overload):
        for name, value in (("loop", None), ("thread", "0")):
            env = {k: v for k, v in os.environ.items() if k != "KBUNDLE_ENGINE_ON_LOOP_MS"}
            if value is not None:
                env["KBUNDLE_ENGINE_ON_LOOP_MS"] = value
            out = work / f"{name}-{round_no}.md"
            cmd = [sys.executable, str(HERE / "overload.py"), "--out", str(out)]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            o = json.loads(out.with_suffix(".json").read_text())["overload"]
            runs.append((round_no, name, o))
            print(round_no, name, o["goodput_vs_saturation"], o["resource_exhausted_p99_ms"])
    lines = [
        "# engine_on_loop_ms under overload (bench/overload.py), derived vs off, alternating",
        "",
        f"`.venv/bin/python bench/engine_on_loop.py --overload {args.overload}`, {before['cpu']}, "
        f"{before['cpus']} CPUs; load average before {' / '.join(before['loadavg'])}, after "
        f"{' / '.join(run.machine()['loadavg'])}.",
        "",
        "Each row is one full `python bench/overload.py` run (MLP on one core, 256 gRPC callers "
        "with 100 ms deadlines; figures of its overload phase). **loop** = the server's derived "
        "engine_on_loop_ms (0.5 ms with one CPU); **thread** = `KBUNDLE_ENGINE_ON_LOOP_MS=0`.",
        "",
        "| round | variant | answered/s | goodput vs saturation | answered p99 ms | "
        "RESOURCE_EXHAUSTED p99 ms (wire) | server loop samples over 5 ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for round_no, name, o in runs:
        lag = o.get("server_loop_lag") or {}
        lines.append(
            f"| {round_no} | {name} | {o['answers_per_s']} | "
            f"{o['goodput_vs_saturation'] * 100:.1f} % | {o['p99_ms']} | "
            f"{o['resource_exhausted_p99_ms']} | {lag.get('over_5ms', '–')} |"
        )
    for name in ("loop", "thread"):
        mine = [o for _, n, o in runs if n == name]
        lines.append(
            f"| median | {name} | {statistics.median(o['answers_per_s'] for o in mine)} | "
            f"{statistics.median(o['goodput_vs_saturation'] for o in mine) * 100:.1f} % | "
            f"{statistics.median(o['p99_ms'] for o in mine)} | "
            f"{statistics.median(o['resource_exhausted_p99_ms'] for o in mine)} | – |"
        )
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "engine_on_loop_overload.md").write_text(text)
    print(text)
    return 0


def write(args, before: dict, after: dict, cells: dict[tuple, list[dict]]) -> None:
    out = Path(args.out)
    rows = []
    for (model, protocol, concurrency, name), runs in sorted(cells.items()):
        rows.append(
            {
                "model": model,
                "protocol": protocol,
                "concurrency": concurrency,
                "variant": name,
                "infer_per_s": statistics.median(r["throughput"] for r in runs),
                "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                "cpu_us": statistics.median(r["cpu_us"] for r in runs),
                "rounds": [round(r["throughput"]) for r in runs],
            }
        )
    (out / "engine_on_loop.json").write_text(
        json.dumps({"machine": {"before": before, "after": after}, "cells": rows}, indent=1)
    )
    lines = [
        "# Short batches on the event-loop thread (`engine_on_loop_ms`), A/B on one core",
        "",
        f"`.venv/bin/python bench/engine_on_loop.py --rounds {args.rounds}`, {before['cpu']}, "
        f"{before['cpus']} CPUs ({before['hypervisor']} guest), kernel {before['kernel']}, Python "
        f"{before['python']}; load average before {' / '.join(before['loadavg'])}, after "
        f"{' / '.join(after['loadavg'])}.",
        "",
        "Both predictors run the same model pinned to CPU 0, perf_analyzer to CPU 1 (batch-1 "
        "requests, binary tensors over HTTP). **loop** = no flags: with one CPU the predictor "
        "derives `engine_on_loop_ms` 2 and runs batches estimated at 2 ms or less on its event-loop "
        "thread; **thread** = `--engine_on_loop_ms 0`: every batch on the engine thread. Each "
        "round measures every cell on both, back to back. Medians over the rounds; server CPU "
        "per request is the server process's CPU time over the perf_analyzer run divided by the "
        "requests it answered (rows counted by kbundle_batch_size).",
        "",
        "| model | protocol | c | variant | infer/s | p50 ms | p99 ms | server CPU µs/request | rounds (infer/s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['concurrency']} | {r['variant']} | "
            f"{r['infer_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us']:.0f} | "
            f"{', '.join(map(str, r['rounds']))} |"
        )
    (out / "engine_on_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
