"""Overload benchmark (issue 12): the MLP predictor on one core, driven past saturation over gRPC.

1. Saturation: a closed loop at `--saturation-concurrency` without deadlines; its answers/s is
   the throughput the server sustains.
2. Overload: a closed loop at `--concurrency` (default 256, ~4x what one core sustains) for
   `--duration` s, every call with a `--deadline-ms` gRPC deadline. Reported: answered calls
   (each checked against numpy), their p50/p99, refusals by code and their p99, any other code,
   goodput (answers within the deadline per second) vs saturation throughput, the server's peak RSS.
3. Saturation again, as in 1: goodput is judged against the mean of the two, since this VM's speed
   drifts by a third within minutes, and one phase before is no fixed reference.
4. Optionally (`--eager-seconds`) overload again with callers that retry at once, for comparison.
5. Recovery: right after, one client calls in a loop for 1 s; every call must answer correctly.

Each phase also reports the batches the server ran during it (mean rows and engine ms per batch,
from /metrics read before and after the phase), so a goodput gap shows whether overload shrank
the batches or took the loop's time.

`python bench/overload.py [--duration 30] [--clients 2] [--out bench/results/overload.md]`; the
server is pinned with `taskset -c SERVER_CPU`; the load comes from `--clients` processes (by default
bench/grpc_load.py's lean HTTP/2 client, `--client aio` for grpc.aio; one event loop each, the
concurrency split between them) pinned to CLIENT_CPU. Both processes' CPU
use is reported, so a run whose client core was the limit shows it.

Latency of a refusal: RESOURCE_EXHAUSTED is timed like an answer (the lean client: from the write
that sent the call to the kernel's receive stamp of the bytes that brought its status; the aio
client: from the call's start); a
DEADLINE_EXCEEDED is timed as its lateness, the time from the call's deadline to the moment the
client saw the status (a call cannot be refused for its deadline before the deadline passes).

The server inherits this process's environment, so a setting can be varied without a flag: the
engine_on_loop_ms pair was `KBUNDLE_ENGINE_ON_LOOP_MS=2` (`--out
bench/results/overload_on_loop_2ms.md`) and `=0` (`--out bench/results/overload_on_loop_off.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from grpc import aio
from tritonclient.grpc import service_pb2 as pb

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from machine import cpu_model  # noqa: E402
from models import mlp  # noqa: E402
from overload_report import (  # noqa: E402
    batch_figures,
    batch_totals,
    loop_lag,
    loop_lag_buckets,
    phase_batches,
    write_markdown,
)

from kbundle.serving.loop_lag import LoopLagProbe  # noqa: E402
from kbundle.serving.metrics import LOOP_LAG  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
REFUSALS = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
BACKOFF_JITTER = 0.2  # gRPC's retry backoff jitter (gRFC A6)
STAGGER_S = 0.1  # lean client: callers start spread over this, not all in one write
# max_queue_size 64: at most 64 requests wait behind the batch running, about 20 ms of work at
# the 2,500-3,900 answers/s of the 2026-11-29 runs, well within 100 ms; a call that finds the
# queue full is refused on its headers. (It was 24 when the server answered about 800/s: 24 then
# held ~30 ms of work, and now under 10 ms, so under overload bursts were refused while the core
# idled.)
CONFIG = "max_batch_size: 32\nmax_batch_delay_ms: 1\nintra_op_threads: 1\nmax_queue_size: 64\n"


@dataclass
class Tally:
    ok: list[float] = field(default_factory=list)
    refused: dict[str, list[float]] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    # lean client: RESOURCE_EXHAUSTED as the caller's callback saw it, the client's handling of
    # the other calls in the same read included (the other figures are wire times there)
    caller_refused: list[float] = field(default_factory=list)

    def refusal(self, name: str, details: str, seconds: float, deadline_s: float | None) -> None:
        """RESOURCE_EXHAUSTED: time to the answer, kept apart when the server shed the call after
        it queued ("overloaded"); DEADLINE_EXCEEDED: lateness past the deadline."""
        if name not in REFUSALS:
            self.other[name] = self.other.get(name, 0) + 1
            return
        late = name == "DEADLINE_EXCEEDED" and deadline_s is not None
        key = f"{name} shed" if "overloaded" in (details or "") else name
        self.refused.setdefault(key, []).append(seconds - deadline_s if late else seconds)

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.wrong += other.wrong
        self.caller_refused += other.caller_refused
        for name, values in other.refused.items():
            self.refused.setdefault(name, []).extend(values)
        for name, count in other.other.items():
            self.other[name] = self.other.get(name, 0) + count


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


@dataclass(frozen=True)
class Load:
    """One load phase: closed-loop callers, how long, their deadline, and how long a caller
    refused with RESOURCE_EXHAUSTED waits before its next call (the server's retry hint)."""

    concurrency: int
    seconds: float
    deadline_s: float | None = None
    backoff_s: float = 0.0
    ramp_s: float = 0.0  # calls started this early are sent but not counted


def backoff(load: Load) -> float:
    """The server's retry hint with gRPC's +-20 % jitter: callers refused together must not
    all come back in the same millisecond (a herd every second, refused as one burst)."""
    return load.backoff_s * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)


async def client_loop(call, work, load: Load, stop_at: float, tally: Tally, i: int):
    n = i
    while time.monotonic() < stop_at:
        payload, want = work[n % len(work)]
        n += 1
        started = time.perf_counter()
        try:
            response = await call(payload, timeout=load.deadline_s)
        except aio.AioRpcError as exc:
            seconds = time.perf_counter() - started
            tally.refusal(exc.code().name, exc.details(), seconds, load.deadline_s)
            if exc.code().name == "RESOURCE_EXHAUSTED" and load.backoff_s:
                await asyncio.sleep(backoff(load))
            continue
        seconds = time.perf_counter() - started
        if want is not None and not np.allclose(
            np.frombuffer(response.raw_output_contents[0], np.float32), want, atol=1e-4
        ):
            tally.wrong += 1
        tally.ok.append(seconds)


async def drive_one(url: str, work, load: Load) -> Tally:
    async with aio.insecure_channel(url) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        tally = Tally()
        stop_at = time.monotonic() + load.seconds
        await asyncio.gather(
            *(client_loop(call, work, load, stop_at, tally, i) for i in range(load.concurrency))
        )
        return tally


async def drive_one_lean(url: str, work, load: Load) -> Tally:
    """The same closed loop on bench/grpc_load.py's client: each caller's next call is sent
    from the completion of its last (no task per call), all on one HTTP/2 connection."""
    import grpc_load

    loop = asyncio.get_running_loop()
    host, port = url.rsplit(":", 1)
    conn = await grpc_load.connect(host, int(port), METHOD)
    expiry = asyncio.ensure_future(grpc_load.expire_forever([conn]))
    tally, finished = Tally(), loop.create_future()
    stop_at = time.monotonic() + load.seconds
    settled_at = time.perf_counter() + load.ramp_s
    running = load.concurrency

    def issue(n: int) -> None:
        nonlocal running
        if time.monotonic() >= stop_at:
            running -= 1
            if running == 0 and not finished.done():
                finished.set_result(None)
            return
        payload, want = work[n % len(work)]
        started = time.perf_counter()

        def done(status: str, message: str, reply: bytes, wire_s: float) -> None:
            caller_s = time.perf_counter() - started
            seconds = wire_s or caller_s  # 0: never written (connection gone)
            counted = started >= settled_at  # the ramp-up's calls run but are not counted
            if status != "OK":
                if counted:
                    tally.refusal(status, message, seconds, load.deadline_s)
                    if status == "RESOURCE_EXHAUSTED":
                        tally.caller_refused.append(caller_s)
                if status == "RESOURCE_EXHAUSTED" and load.backoff_s:
                    loop.call_later(backoff(load), issue, n + 1)
                else:
                    loop.call_soon(issue, n + 1)
                return
            if counted:
                got = pb.ModelInferResponse.FromString(reply).raw_output_contents[0]
                if want is not None and not np.allclose(
                    np.frombuffer(got, np.float32), want, atol=1e-4
                ):
                    tally.wrong += 1
                tally.ok.append(seconds)
            issue(n + 1)

        conn.call(payload, load.deadline_s, done)

    for i in range(load.concurrency):  # callers join over the first 100 ms, not in one burst
        loop.call_later(random.uniform(0, STAGGER_S), issue, i)
    await finished
    expiry.cancel()
    conn.transport.close()
    return tally


CLIENT_LAG_INTERVAL_S = 0.01


async def _probed(coro):
    """`coro` with the client loop's own lag recorded (the server's metric, in this process)."""
    probe = LoopLagProbe(asyncio.get_running_loop(), CLIENT_LAG_INTERVAL_S).start()
    try:
        return await coro
    finally:
        probe.stop()


def _client_process(job: tuple) -> tuple[Tally, float, dict[str, float]]:
    """One client process: its tally, the CPU seconds it used and its loop-lag buckets."""
    url, work, load, cpu, client = job
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    # As the server does (kbundle.serving.lifecycle.freeze_startup_heap): a full collection over
    # the heap this process inherited (grpc, tritonclient, numpy) pauses its loop for tens of ms,
    # which would be timed as the server's latency.
    gc.collect()
    gc.freeze()
    started = time.process_time()
    run = drive_one_lean if client == "lean" else drive_one
    with asyncio.Runner(loop_factory=_loop_factory(client)) as runner:
        tally = runner.run(_probed(run(url, work, load)))
    lag = {
        sample.labels["le"]: sample.value
        for sample in LOOP_LAG.collect()[0].samples
        if sample.name.endswith("_bucket")
    }
    return tally, time.process_time() - started, lag


def _loop_factory(client: str):
    if client == "lean":
        import uvloop

        return uvloop.new_event_loop
    return None


def drive(args, url: str, work, load: Load) -> tuple[Tally, float, dict[str, float]]:
    """The load's callers split over `args.clients` processes; (tally, client CPU seconds, the
    client loops' lag buckets summed)."""
    clients = max(1, min(args.clients, load.concurrency))
    shares = [
        load.concurrency // clients + (i < load.concurrency % clients) for i in range(clients)
    ]
    jobs = [(url, work, replace(load, concurrency=n), args.client_cpu, args.client) for n in shares]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.map(_client_process, jobs)
    tally, lag = Tally(), {}
    for part, _cpu, buckets in results:
        tally.merge(part)
        for le, count in buckets.items():
            lag[le] = lag.get(le, 0.0) + count
    return tally, sum(cpu for _part, cpu, _lag in results), lag


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model_dir: Path, cpu: str, log: Path, env: dict | None = None
) -> tuple[subprocess.Popen, int, int]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from procs import free_port, wait_http

    http, grpc_port = free_port(), free_port()
    cmd = ["taskset", "-c", cpu, sys.executable, "-m", "kbundle.predictors"]
    cmd += ["--model_name", "mlp", "--model_dir", str(model_dir)]
    cmd += ["--http_port", str(http), "--grpc_port", str(grpc_port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{http}/v2/models/mlp/ready", proc, log, 120)
    return proc, http, grpc_port


def phase(tally: Tally, seconds: float, server_cpu: float, client_cpu: float) -> dict:
    return {
        "answered": len(tally.ok),
        "answers_per_s": round(len(tally.ok) / seconds, 1),
        "wrong_answers": tally.wrong,
        "p50_ms": round(pct(tally.ok, 50), 2),
        "p99_ms": round(pct(tally.ok, 99), 2),
        "refused": {k: len(v) for k, v in tally.refused.items()},
        "refused_p99_ms": {k: round(pct(v, 99), 2) for k, v in tally.refused.items()},
        "resource_exhausted_p99_ms": round(
            pct([s for k, v in tally.refused.items() if k.startswith("RESOURCE") for s in v], 99), 2
        ),
        "resource_exhausted_caller_p99_ms": round(pct(tally.caller_refused, 99), 2),
        "other_codes": tally.other,
        "server_cpu_pct": round(100 * server_cpu / seconds, 1),
        "client_cpu_pct": round(100 * client_cpu / seconds, 1),
    }


def measured(args, url: str, http: int, work, pid: int, load: Load) -> tuple[dict, Tally]:
    """One load phase: (its figures, its tally)."""
    batches_before = batch_totals(server_metrics(http))
    cpu_before = server_cpu_s(pid)
    tally, client_cpu, client_lag = drive(args, url, work, load)
    counted_s = (
        load.seconds - load.ramp_s
    )  # CPU is over the whole phase, rates over the counted part
    figures = phase(tally, counted_s, server_cpu_s(pid) - cpu_before, client_cpu)
    figures["server_cpu_pct"] = round(100 * (server_cpu_s(pid) - cpu_before) / load.seconds, 1)
    figures["client_cpu_pct"] = round(100 * client_cpu / load.seconds, 1)
    figures["client_loop_lag"] = loop_lag({}, client_lag)
    figures["batches"] = phase_batches(batches_before, batch_totals(server_metrics(http)))
    if load.deadline_s is not None:
        within = sum(1 for s in tally.ok if s <= load.deadline_s)
        figures["goodput_per_s"] = round(within / counted_s, 1)
    return figures, tally


def run_phases(args, url: str, http: int, work, pid: int) -> dict:
    drive(args, url, work, Load(8, 2.0))  # warm
    ramp = args.ramp_s if args.client == "lean" else 0.0
    saturation = Load(args.saturation_concurrency, args.saturation_seconds, ramp_s=ramp)
    sat, _ = measured(args, url, http, work, pid, saturation)
    deadline = args.deadline_ms / 1000
    lag_before = loop_lag_buckets(server_metrics(http))
    over, _ = measured(
        args,
        url,
        http,
        work,
        pid,
        Load(args.concurrency, args.duration, deadline, args.backoff_ms / 1000, ramp),
    )
    over["server_loop_lag"] = loop_lag(lag_before, loop_lag_buckets(server_metrics(http)))
    # Saturation again after the overload: this VM's speed drifts by a third within minutes, so
    # goodput is judged against the mean of the phases before and after it.
    sat_after, _ = measured(args, url, http, work, pid, saturation)
    bracket = (sat, sat_after)
    eager = None
    if args.eager_seconds:
        eager, _ = measured(
            args,
            url,
            http,
            work,
            pid,
            Load(args.concurrency, args.eager_seconds, deadline, ramp_s=ramp),
        )
    rss = peak_rss_mb(pid)
    after, _, _ = drive(args, url, work, Load(1, 1.0, 1.0))
    total = len(after.ok) + sum(map(len, after.refused.values())) + sum(after.other.values())
    metrics = server_metrics(http)
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "deadline_ms": args.deadline_ms,
        "backoff_ms": args.backoff_ms,
        "clients": args.clients,
        "client": args.client,
        "ramp_s": args.ramp_s if args.client == "lean" else 0.0,
        "saturation_concurrency": args.saturation_concurrency,
        "saturation": sat,
        "saturation_after": sat_after,
        "overload": {**over, "goodput_vs_saturation": ratio(over, bracket)},
        "overload_eager": eager and {**eager, "goodput_vs_saturation": ratio(eager, bracket)},
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "server_peak_rss_mb": round(rss, 1),
        "recovery_ok": f"{len(after.ok) - after.wrong}/{total}",
        "batches": batch_figures(metrics),
    }


def server_metrics(http: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read().decode()


def ratio(over: dict, saturation: tuple[dict, ...]) -> float:
    """Goodput over the mean throughput of the saturation phases around it."""
    mean = sum(p["answers_per_s"] for p in saturation) / len(saturation)
    return round(over["goodput_per_s"] / mean, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    # 64: 256 callers are 4x it, as issue 12 puts it; at 32 the server's core idled a quarter of
    # the phase (each batch's callers were still answering), so its figure was no saturation
    parser.add_argument("--saturation-concurrency", type=int, default=64)
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--client",
        choices=("lean", "aio"),
        default="lean",
        help="lean: bench/grpc_load.py (HTTP/2 frames on uvloop); aio: grpc.aio (its Python "
        "layer was the limit at 256 callers on one core)",
    )
    parser.add_argument(
        "--backoff-ms",
        type=float,
        default=1000.0,
        help="a caller refused with RESOURCE_EXHAUSTED waits this long (the server's Retry-After)",
    )
    parser.add_argument(
        "--eager-seconds",
        type=float,
        default=10.0,
        help="then a phase whose refused callers retry at once (0: skip)",
    )
    parser.add_argument(
        "--ramp-s",
        type=float,
        default=1.0,
        help="lean client: calls started in each phase's first seconds run but are not counted "
        "(callers joining, the queue filling): the figures are the steady state",
    )
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin the clients")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "overload.md")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="overload-"))
    model_path = mlp(root / "mlp" / "model.onnx")
    (root / "mlp" / "kbundle.yaml").write_text(CONFIG)
    work = requests_and_answers(model_path)
    proc, http, grpc_port = start_server(root / "mlp", args.server_cpu, root / "server.log")
    try:
        result = run_phases(args, f"127.0.0.1:{grpc_port}", http, work, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out, result, CONFIG)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
