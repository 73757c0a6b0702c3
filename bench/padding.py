"""Padding-aware batching vs none, same run: a text encoder, lengths uniform in 8..128.

    .venv/bin/python bench/padding.py [--seconds 10] [--rounds 3] [--concurrency 32] [--clients 2]
        [--grpc-threads 64] [--write bench/results/padding.md]

The encoder is kbundle.samples_text (4 layers, hidden 256, exported to ONNX by torch, dim_params
`b` and `s`), served by the real predictor (`max_batch_size: 32`): without padding, with buckets
16/32/64/128 grouped per bucket (`merge: false`), the same buckets merged by measured engine
cost (the default) and buckets every 16. `--clients` gRPC client processes keep `--concurrency`
batch-1 requests in flight between them (async_infer; a callback sends the next), each of a
random length. Reported per mode: throughput, p50/p99 latency, mean rows per engine call
(kbundle_batch_size), padding overhead (padded / real positions), and where the requests were
(Little's law: in flight at the clients = throughput x mean latency, queued in the batcher =
throughput x mean queue wait) with the engine's busy share. First, ONNX Runtime alone on this
CPU (rows/s at batch 1..32, lengths 32..128): what batching can give at all here.
`uptime` before and after: the machine may be shared, and the figures move with its load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tritonclient.grpc as grpcclient  # noqa: E402
from procs import start_module  # noqa: E402

MODEL = "enc"
BASE = "max_batch_size: 32\nmax_batch_delay_ms: 2\n"
PADDING = """padding:
  dim: s
  buckets: [16, 32, 64, 128]
  pad_values: {input_ids: 0, attention_mask: 0}
  mask: attention_mask
"""
FINE = PADDING.replace("[16, 32, 64, 128]", "[16, 32, 48, 64, 80, 96, 112, 128]")
MODES = {
    "padding off": BASE,
    "buckets 16/32/64/128, merge off": BASE + PADDING + "  merge: false\n",
    "buckets 16/32/64/128": BASE + PADDING,
    "buckets every 16 up to 128": BASE + FINE,
}
RAW_LENGTHS = (32, 64, 128)
RAW_BATCHES = (1, 8, 16, 32)


def build_model(cache: Path) -> Path:
    from kbundle.samples_text import build_text_encoder

    if not (cache / "model.onnx").is_file():
        build_text_encoder(cache, layers=4, hidden=256)
    return cache / "model.onnx"


def raw_engine(onnx: Path, seconds: float = 1.0) -> dict[int, dict[int, float]]:
    """ONNX Runtime alone, with the predictor's default threads (the CPU budget): rows/s per
    length and batch, all rows of one length (no padding)."""
    import onnxruntime as ort

    from kbundle.cpu_budget import cpu_budget

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = cpu_budget().threads
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    table: dict[int, dict[int, float]] = {}
    for length in RAW_LENGTHS:
        for batch in RAW_BATCHES:
            ids = np.random.default_rng(0).integers(1, 1000, (batch, length)).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            table.setdefault(length, {})[batch] = batch * calls_per_second(session, feed, seconds)
    return table


def calls_per_second(session, feed: dict, seconds: float) -> float:
    for _ in range(3):
        session.run(["sentence_vec"], feed)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(["sentence_vec"], feed)
        calls += 1
    return calls / (time.perf_counter() - started)


def metric(http_url: str, series: str) -> float:
    text = urllib.request.urlopen(f"http://{http_url}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


def drive(grpc_url: str, seconds: float, concurrency: int, seed: int) -> tuple[list[float], int]:
    """Keep `concurrency` requests in flight for `seconds`; latencies of the answered ones."""
    client = grpcclient.InferenceServerClient(grpc_url)
    rng = np.random.default_rng(seed)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    done = threading.Event()
    deadline = time.perf_counter() + seconds
    in_flight = [0]

    def send() -> None:
        with lock:
            length = int(rng.integers(8, 129))
            ids = rng.integers(1, 1000, (1, length)).astype(np.int64)
            in_flight[0] += 1
        tensors = []
        for name, array in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
            tensor = grpcclient.InferInput(name, [1, length], "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        started = time.perf_counter()
        client.async_infer(
            MODEL,
            tensors,
            callback=lambda result, error: finish(started, error),
            outputs=[grpcclient.InferRequestedOutput("sentence_vec")],
        )

    def finish(started: float, error) -> None:
        now = time.perf_counter()
        with lock:
            in_flight[0] -= 1
            if error is None:
                latencies.append(now - started)
            else:
                errors[0] += 1
            more = now < deadline
            if not more and in_flight[0] == 0:
                done.set()
        if more:
            send()

    for _ in range(concurrency):
        send()
    done.wait(seconds + 120)
    client.close()
    return latencies, errors[0]


def drive_clients(
    grpc_url: str, seconds: float, concurrency: int, seed: int, clients: int
) -> tuple[list[float], int]:
    """`drive` split over `clients` processes: one Python client on a small machine cannot keep
    many requests in flight (its callbacks share one GIL with the sending)."""
    if clients <= 1:
        return drive(grpc_url, seconds, concurrency, seed)
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    jobs = [(grpc_url, seconds, share, seed * 100 + i) for i, share in enumerate(shares)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        parts = pool.starmap(drive, jobs)
    return [t for latencies, _ in parts for t in latencies], sum(errors for _, errors in parts)


def start(name: str, config: str, onnx: Path, tmp: Path, grpc_threads: int | None):
    model_dir = tmp / name.replace(" ", "-").replace("/", "-")
    model_dir.mkdir()
    shutil.copy(onnx, model_dir / "model.onnx")
    (model_dir / "kbundle.yaml").write_text(config)
    return start_module(
        "kbundle.predictors",
        ["--model_name", MODEL, "--model_dir", str(model_dir)],
        tmp / f"{model_dir.name}.log",
        f"/v2/models/{MODEL}/ready",
        # One process per mode: the modes compare padding, not --workers (bench/workers.py does).
        env={"KBUNDLE_WORKERS": "1"}
        | ({"KBUNDLE_GRPC_THREADS": str(grpc_threads)} if grpc_threads else {}),
        timeout=180,
    )


def measure(servers: dict, args) -> list[dict]:
    """Rounds of `--seconds` per mode, the modes taking turns, so a change in the machine's
    load falls on all of them alike; totals over the rounds."""
    totals = {name: {"latencies": [], "errors": 0, "elapsed": 0.0} for name in servers}
    deltas = {name: dict.fromkeys(SERIES, 0.0) for name in servers}
    for server in servers.values():
        drive_clients(server.grpc_url, 3, args.concurrency, 99, args.clients)  # warm-up
    for round_index in range(args.rounds):
        for name, server in servers.items():
            before = {s: metric(server.http_url, s) for s in SERIES}
            started = time.perf_counter()
            latencies, errors = drive_clients(
                server.grpc_url, args.seconds, args.concurrency, round_index, args.clients
            )
            totals[name]["elapsed"] += time.perf_counter() - started
            totals[name]["latencies"] += latencies
            totals[name]["errors"] += errors
            for s in SERIES:
                deltas[name][s] += metric(server.http_url, s) - before[s]
    return [row(name, totals[name], deltas[name]) for name in servers]


def row(name: str, total: dict, delta: dict) -> dict:
    latencies = total["latencies"]
    real = delta['kbundle_padding_positions_total{kind="real"']
    padding = delta['kbundle_padding_positions_total{kind="padding"']
    throughput = len(latencies) / total["elapsed"]
    waits = delta["kbundle_queue_wait_seconds_sum"] / max(
        delta["kbundle_queue_wait_seconds_count"], 1
    )
    return {
        "mode": name,
        "requests": len(latencies),
        "errors": total["errors"],
        "throughput": throughput,
        "client_in_flight": throughput * float(np.mean(latencies)),
        "queued": throughput * waits,
        "engine_busy": delta["kbundle_engine_seconds_sum"] / total["elapsed"],
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "rows_per_call": delta["kbundle_batch_size_sum"]
        / max(delta["kbundle_batch_size_count"], 1),
        "padding_overhead": padding / real if real else 0.0,
    }


SERIES = (
    "kbundle_batch_size_sum",
    "kbundle_batch_size_count",
    "kbundle_queue_wait_seconds_sum",
    "kbundle_queue_wait_seconds_count",
    "kbundle_engine_seconds_sum",
    'kbundle_padding_positions_total{kind="real"',
    'kbundle_padding_positions_total{kind="padding"',
)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def raw_lines(raw: dict[int, dict[int, float]]) -> list[str]:
    head = " | ".join(f"batch {b}" for b in RAW_BATCHES)
    lines = [
        "ONNX Runtime alone on this CPU (rows/s, every row of one length, no padding, the "
        "predictor's threads): what batching itself gives the engine here.",
        "",
        f"| length | {head} | batch {RAW_BATCHES[-1]} / batch 1 |",
        "|---:|" + "---:|" * (len(RAW_BATCHES) + 1),
    ]
    for length, by_batch in raw.items():
        cells = " | ".join(f"{by_batch[b]:.0f}" for b in RAW_BATCHES)
        lines.append(f"| {length} | {cells} | {by_batch[RAW_BATCHES[-1]] / by_batch[1]:.2f}x |")
    scale, exponent = raw_fit(raw)
    return [
        *lines,
        "",
        "Fitted as the batcher fits its engine (`padding_plan.EngineCost`: seconds = scale x "
        f"positions^exponent): exponent {exponent:.2f} (0: a call costs the same at any size, "
        "buckets merge; 1: linear in positions, they stay apart).",
    ]


def raw_fit(raw: dict[int, dict[int, float]]) -> tuple[float, float]:
    from kbundle.predictors.padding_plan import EngineCost

    cost = EngineCost()
    for length, by_batch in raw.items():
        for batch, rows_per_s in by_batch.items():
            cost.observe(batch * length, batch / rows_per_s)
    return cost.estimate() or (0.0, 1.0)


def ceiling(raw: dict[int, dict[int, float]], overhead: float) -> float:
    """Engine-only throughput gain for lengths uniform 8..128: batch-1 calls at each request's
    own length (time linear in length, fitted to the batch-1 row) against batch-16 calls whose
    positions cost what they cost at batch 16, padded by `overhead`."""
    lengths = np.array(RAW_LENGTHS, dtype=float)
    single = np.polyfit(lengths, [1 / raw[n][1] for n in RAW_LENGTHS], 1)
    mean_length = np.arange(8, 129).mean()
    per_position = np.mean([1 / (raw[n][16] * n) for n in RAW_LENGTHS])
    return float(np.polyval(single, mean_length) / (per_position * mean_length * (1 + overhead)))


def contention(loads: list[str]) -> list[str]:
    """A warning line when the 1-minute load average passed the CPU count: then other jobs
    shared the cores, and ONNX Runtime's intra-op threads (one per CPU, meeting at every op)
    stall whenever one is descheduled: the same call's time then varied 30-fold here."""
    peak = max(float(line.split("load average:")[1].split(",")[0]) for line in loads)
    if peak <= (os.cpu_count() or 1):
        return []
    return [
        f"- the load average reached {peak:.2f} on {os.cpu_count()} CPUs: other jobs shared "
        "the cores, and these figures (the raw engine table too) measure that contention "
        "more than batching; rerun on a quiet machine"
    ]


def report(rows: list[dict], raw: dict, loads: list[str], args) -> str:
    threads = args.grpc_threads or "the default"
    lines = [
        "# Padding-aware batching: text encoder, lengths uniform 8..128 (bench/padding.py)",
        "",
        f"Command: `.venv/bin/python bench/padding.py --seconds {args.seconds:g} --rounds "
        f"{args.rounds} --concurrency {args.concurrency} --clients {args.clients}"
        + (f" --grpc-threads {args.grpc_threads}`" if args.grpc_threads else "`")
        + f": the modes take turns, {args.seconds:g} s each, {args.rounds} rounds, totals over "
        "the rounds. Encoder: 4 layers, hidden 256, ONNX Runtime CPU, `max_batch_size: 32`, "
        f"`max_batch_delay_ms: 2`; batch-1 gRPC requests, {args.concurrency} in flight from "
        f"{args.clients} client process(es), gRPC threads: {threads}. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; clients and server share it. Compare "
        "rows of one run, not runs across machines: the figures move with the load.",
        "",
        f"- load before: `{loads[0]}`",
        f"- load after: `{loads[1]}`",
        *contention(loads),
        "",
        "| mode | infer/s | p50 ms | p99 ms | rows per engine call | padding overhead "
        "| in flight at clients | queued in batcher | engine busy | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['rows_per_call']:.2f} | {r['padding_overhead'] * 100:.0f} % | "
            f"{r['client_in_flight']:.1f} | {r['queued']:.1f} | {r['engine_busy'] * 100:.0f} % "
            f"| {r['errors']} |"
        )
    base = rows[0]["throughput"] or 1.0
    ratios = ", ".join(
        f"{r['mode']} {r['throughput'] / base:.2f}x (engine alone could give "
        f"{ceiling(raw, r['padding_overhead']):.2f}x at that padding)"
        for r in rows[1:]
    )
    lines += ["", f"Throughput relative to padding off: {ratios}.", "", *raw_lines(raw), ""]
    return "\n".join(lines)


DOC = ROOT / "docs" / "batching.md"
MARKERS = ("<!-- padding-table (bench/padding.py --write) -->", "<!-- /padding-table -->")


def splice_docs(result: str) -> None:
    """docs/batching.md quotes the result's load, table and ratios between its markers, so a
    rerun never leaves the docs quoting figures the result no longer holds."""
    lines = result.splitlines()
    ratios = next(i for i, line in enumerate(lines) if line.startswith("Throughput"))
    loads = [line for line in lines if line.startswith(("- load", "- the load"))]
    table = [line for line in lines[:ratios] if line.startswith("|")]
    text = DOC.read_text()
    head, rest = text.split(MARKERS[0], 1)
    tail = rest.split(MARKERS[1], 1)[1]
    block = "\n".join([MARKERS[0], *loads, "", *table, "", lines[ratios], MARKERS[1]])
    DOC.write_text(head + block + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--grpc-threads",
        type=int,
        default=64,
        help="KBUNDLE_GRPC_THREADS: a thread per call in flight, so at least --concurrency",
    )
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    onnx = build_model(Path.home() / ".cache" / "kbundle" / "bench-text-encoder-4x256")
    loads = [uptime()]
    raw = raw_engine(onnx)
    with tempfile.TemporaryDirectory() as tmp:
        servers = {n: start(n, c, onnx, Path(tmp), args.grpc_threads) for n, c in MODES.items()}
        try:
            rows = measure(servers, args)
        finally:
            for server in servers.values():
                server.stop()
    loads.append(uptime())
    text = report(rows, raw, loads, args)
    print(text)
    if args.write:
        args.write.write_text(text)
        splice_docs(text)
        args.write.with_suffix(".json").write_text(
            json.dumps({"rows": rows, "raw_engine": raw, "load": loads}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
