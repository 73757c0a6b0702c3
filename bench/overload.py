"""Overload benchmark (issue 12): the MLP predictor on one core, driven past saturation over gRPC.

1. Saturation: a closed loop at `--saturation-concurrency` without deadlines; its answers/s is
   the throughput the server sustains.
2. Overload: a closed loop at `--concurrency` (default 256, ~4x what one core sustains) for
   `--duration` s, every call with a `--deadline-ms` gRPC deadline. Reported: answered calls
   (each checked against numpy), their p50/p99, refusals by code and their p99, any other code,
   goodput (answers within the deadline per second) vs saturation throughput, the server's peak RSS.
3. Recovery: right after, one client calls in a loop for 1 s; every call must answer correctly.

`python bench/overload.py [--duration 30] [--out bench/results/overload.md]`; the server is pinned
with `taskset -c SERVER_CPU`, the client runs in this process (grpc.aio, one event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from grpc import aio
from tritonclient.grpc import service_pb2 as pb

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from models import mlp  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
REFUSALS = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
CONFIG = "max_batch_size: 32\nmax_batch_delay_ms: 1\nintra_op_threads: 1\n"


@dataclass
class Tally:
    ok: list[float] = field(default_factory=list)
    refused: dict[str, list[float]] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    wrong: int = 0


def reference(model_path: Path, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": rows})[0]


def requests_and_answers(model_path: Path, count: int = 16) -> list[tuple[bytes, np.ndarray]]:
    rows = np.random.default_rng(0).standard_normal((count, 256)).astype(np.float32)
    want = reference(model_path, rows)
    out = []
    for i in range(count):
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 256])
        request.raw_input_contents.append(rows[i : i + 1].tobytes())
        out.append((request.SerializeToString(), want[i]))
    return out


async def client_loop(call, work, stop_at: float, deadline_s: float | None, tally: Tally, i: int):
    n = i
    while time.monotonic() < stop_at:
        payload, want = work[n % len(work)]
        n += 1
        started = time.perf_counter()
        try:
            response = await call(payload, timeout=deadline_s)
        except aio.AioRpcError as exc:
            name = exc.code().name
            bucket = tally.refused if name in REFUSALS else None
            if bucket is None:
                tally.other[name] = tally.other.get(name, 0) + 1
            else:
                bucket.setdefault(name, []).append(time.perf_counter() - started)
            continue
        seconds = time.perf_counter() - started
        got = np.frombuffer(response.raw_output_contents[0], np.float32)
        if not np.allclose(got, want, atol=1e-4):
            tally.wrong += 1
        tally.ok.append(seconds)


async def drive(url: str, work, concurrency: int, seconds: float, deadline_s: float | None):
    async with aio.insecure_channel(url) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        tally = Tally()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(client_loop(call, work, stop_at, deadline_s, tally, i) for i in range(concurrency))
        )
        return tally


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model_dir: Path, cpu: str, log: Path) -> tuple[subprocess.Popen, int, int]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from procs import free_port, wait_http

    http, grpc_port = free_port(), free_port()
    cmd = ["taskset", "-c", cpu, sys.executable, "-m", "kbundle.predictors"]
    cmd += ["--model_name", "mlp", "--model_dir", str(model_dir)]
    cmd += ["--http_port", str(http), "--grpc_port", str(grpc_port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{http}/v2/models/mlp/ready", proc, log, 120)
    return proc, http, grpc_port


def summary(args, sat: Tally, over: Tally, rss: float, recovered: str, load: str) -> dict:
    sat_tput = len(sat.ok) / args.saturation_seconds
    within = sum(1 for s in over.ok if s <= args.deadline_ms / 1000)
    refusal_times = [s for values in over.refused.values() for s in values]
    return {
        "uptime": load,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "deadline_ms": args.deadline_ms,
        "saturation": {
            "concurrency": args.saturation_concurrency,
            "answers_per_s": round(sat_tput, 1),
            "p50_ms": round(pct(sat.ok, 50), 2),
            "p99_ms": round(pct(sat.ok, 99), 2),
        },
        "overload": {
            "answered": len(over.ok),
            "wrong_answers": over.wrong,
            "answered_p50_ms": round(pct(over.ok, 50), 2),
            "answered_p99_ms": round(pct(over.ok, 99), 2),
            "refused": {k: len(v) for k, v in over.refused.items()},
            "refused_p99_ms": round(pct(refusal_times, 99), 2),
            "other_codes": over.other,
            "goodput_per_s": round(within / args.duration, 1),
            "goodput_vs_saturation": round(within / args.duration / sat_tput, 3),
        },
        "server_peak_rss_mb": round(rss, 1),
        "recovery_ok": recovered,
    }


def write_markdown(path: Path, result: dict) -> None:
    o, s = result["overload"], result["saturation"]
    lines = [
        "# Overload: MLP predictor on one core, gRPC, deadlines",
        "",
        f"`python bench/overload.py --duration {result['duration_s']}`; load while measured: "
        f"`{result['uptime']}` (2 cores shared by 8 helper sessions at the time: noisy).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| saturation (c={s['concurrency']}, no deadline) | {s['answers_per_s']} answers/s, "
        f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms |",
        f"| overload | c={result['concurrency']}, {result['deadline_ms']} ms deadlines, "
        f"{result['duration_s']} s |",
        f"| answered (all checked) | {o['answered']}, wrong {o['wrong_answers']}, "
        f"p50 {o['answered_p50_ms']} ms, p99 {o['answered_p99_ms']} ms |",
        f"| refused | {o['refused']}, p99 {o['refused_p99_ms']} ms |",
        f"| other codes | {o['other_codes'] or 'none'} |",
        f"| goodput (answers within deadline) | {o['goodput_per_s']}/s = "
        f"{o['goodput_vs_saturation'] * 100:.1f} % of saturation |",
        f"| server peak RSS | {result['server_peak_rss_mb']} MB |",
        f"| recovery right after | {result['recovery_ok']} correct |",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--saturation-concurrency", type=int, default=32)
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin the client")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "overload.md")
    args = parser.parse_args()
    if args.client_cpu >= 0:  # the client must not compete with the server for its core
        os.sched_setaffinity(0, {args.client_cpu})
    root = Path(tempfile.mkdtemp(prefix="overload-"))
    model_path = mlp(root / "mlp" / "model.onnx")
    (root / "mlp" / "kbundle.yaml").write_text(CONFIG)
    work = requests_and_answers(model_path)
    proc, http, grpc_port = start_server(root / "mlp", args.server_cpu, root / "server.log")
    url = f"127.0.0.1:{grpc_port}"
    try:
        asyncio.run(drive(url, work, 8, 2.0, None))  # warm
        sat = asyncio.run(
            drive(url, work, args.saturation_concurrency, args.saturation_seconds, None)
        )
        over = asyncio.run(
            drive(url, work, args.concurrency, args.duration, args.deadline_ms / 1000)
        )
        rss = peak_rss_mb(proc.pid)
        after = asyncio.run(drive(url, work, 1, 1.0, 1.0))
        total = len(after.ok) + sum(map(len, after.refused.values())) + sum(after.other.values())
        recovered = f"{len(after.ok) - after.wrong}/{total}"
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read()
    finally:
        proc.terminate()
        proc.wait(30)
    result = summary(args, sat, over, rss, recovered, load)
    dropped = [
        ln
        for ln in metrics.decode().splitlines()
        if ln.startswith("kbundle_requests_dropped_total")
    ]
    result["dropped_metrics"] = dropped
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out, result)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
