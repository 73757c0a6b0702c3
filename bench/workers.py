"""`--workers` scaling: the same predictor started with `--workers 1, 2, ...`, same run, same command.

    python bench/workers.py [--workers-list 1,2] [--models tiny mlp wide] [--rounds 2] [--seconds 5]

Needs the bench venv's perf_analyzer (`bash bench/run.sh` makes BENCH_VENV, default .bench-venv).
The predictor runs with no flags but `--workers N` (its CPU budget decides everything else) and
is NOT pinned: it may use every core, and perf_analyzer (batch-1 requests, concurrency 32) shares
the same cores, which the result file says. Rounds interleave the worker counts (A/B/A/B) so a
load change on a shared machine hits every count alike; `uptime` is recorded before and after.
Per cell: throughput, p50 latency and the mean rows per engine call (kbundle_batch_size) read from
/metrics around the measurement. Writes bench/results/workers.md (and .json).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
from run import batch_stats, free_port, machine, model_shape, wait_ready  # noqa: E402

PROTOCOLS = ("grpc", "http")
# The engine owner of `--workers N` (> 1): its CPU per request bounds what N workers can serve.
OWNER_MODULE = b"kbundle.predictors.workers.owner"


def bench_env(bench_venv: Path) -> dict[str, str]:
    """perf_analyzer needs the CUDA runtime library of its venv on the library path (a carried
    perf_analyzer with no venv around it gets LD_LIBRARY_PATH from its caller instead)."""
    env = dict(os.environ)
    python = bench_venv / "bin/python"
    if not python.exists():
        return env
    found = subprocess.run(
        [str(python), "-c",
         "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))"],
        capture_output=True, text=True,
    )  # fmt: skip
    if found.returncode == 0:
        env["LD_LIBRARY_PATH"] = ":".join(
            filter(None, [found.stdout.strip(), env.get("LD_LIBRARY_PATH")])
        )
    return env


def start(
    python: str, model: str, model_dir: Path, workers: int, log: Path
) -> tuple[subprocess.Popen, int, int]:
    http, grpc = free_port(), free_port()
    cmd = [
        python, "-m", "kbundle.predictors", "--model_name", model,
        "--model_dir", str(model_dir), "--http_port", str(http), "--grpc_port", str(grpc),
        "--workers", str(workers),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "KBUNDLE_WORKERS"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready", proc)
    time.sleep(1.0 if workers > 1 else 0.0)  # the other workers finish starting
    return proc, http, grpc


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the supervisor, the owner, the workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in tree(int(child)))]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU of the server's process tree (less load-sensitive than throughput), and
    of its engine owner alone (0 without one)."""
    total = owner = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{member}/cmdline").read_bytes()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        total += ticks
        if OWNER_MODULE in cmdline:
            owner += ticks
    tick = os.sysconf("SC_CLK_TCK")
    return total / tick, owner / tick


def client_cpu_seconds() -> float:
    """User + system CPU of this process's waited-for children: perf_analyzer, once it has exited
    (the predictor is waited for only after its cells)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine spent (all of /proc/stat's 'cpu' line but idle,
    iowait and steal), so (busy / wall) is how many of its CPUs were in use."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def requests_served(http: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^kbundle_requests_total\{.*\} (\S+)$", text, re.M))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(args, server: tuple, model: str, protocol: str, shape: str) -> dict | None:
    proc, http, grpc = server
    out = Path(args.work) / "pa.csv"
    out.unlink(missing_ok=True)
    port = grpc if protocol == "grpc" else http
    cmd = [
        args.perf_analyzer, "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol, "-b", "1",
        "--concurrency-range", str(args.concurrency), "--shape", shape,
        "-p", str(args.seconds * 1000), "--max-trials", "3", "-s", "1000", "-f", str(out),
    ]  # fmt: skip
    if protocol == "http":
        cmd += ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]
    before, cpu, served = batch_stats(http, model), cpu_seconds(proc.pid), requests_served(http)
    client, busy, wall = client_cpu_seconds(), machine_busy_seconds(), time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=args.env)
    client, busy = client_cpu_seconds() - client, machine_busy_seconds() - busy
    wall = time.monotonic() - wall
    after, cpu_after = batch_stats(http, model), cpu_seconds(proc.pid)
    cpu, owner_cpu = (b - a for a, b in zip(cpu, cpu_after, strict=True))
    served = requests_served(http) - served
    if result.returncode != 0 or not out.exists():
        print(f"  perf_analyzer failed: {result.stdout[-800:]}{result.stderr[-800:]}", flush=True)
        return None
    row = next(csv.DictReader(io.StringIO(out.read_text())))
    batches = after[1] - before[1]
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
        "cpu_ms_per_request": 1000 * cpu / served if served else 0.0,
        "owner_cpu_ms_per_request": 1000 * owner_cpu / served if served else 0.0,
        "client_cpu_ms_per_request": 1000 * client / served if served else 0.0,
        "cpus_busy": busy / wall,
    }


def run_cells(args, dirs: dict[str, Path]) -> list[dict]:
    cells = []
    for round_ in range(args.rounds):
        for model in args.models:
            for workers in args.workers_list:
                log = Path(args.work) / f"workers-{model}-{workers}.log"
                server = start(args.python, model, dirs[model], workers, log)
                shape = model_shape(server[1], model, bench_models.INPUT_WIDTH[model])
                try:
                    for protocol in PROTOCOLS:
                        got = measure(args, server, model, protocol, shape)
                        if got:
                            cells.append({"round": round_, "model": model, "workers": workers,
                                          "protocol": protocol, **got})  # fmt: skip
                            print(f"{model} {protocol} workers {workers}: {got}", flush=True)
                finally:
                    stop(server[0])
    return cells


def by_cell(cells: list[dict], workers_list: list[int]):
    """(model, protocol, workers, that cell's rounds), in table order."""
    for model, protocol in sorted({(c["model"], c["protocol"]) for c in cells}):
        for workers in workers_list:
            mine = [
                c
                for c in cells
                if (c["model"], c["protocol"], c["workers"]) == (model, protocol, workers)
            ]
            if mine:
                yield model, protocol, workers, mine


def median(cells: list[dict], key: str) -> float:
    return statistics.median(c.get(key, 0.0) for c in cells)


def summary(cells: list[dict], workers_list: list[int]) -> list[str]:
    lines = [
        "| model | protocol | workers | infer/s (median of rounds) | x workers 1 | p50 ms "
        "| mean batch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base: dict[tuple[str, str], float] = {}
    for model, protocol, workers, mine in by_cell(cells, workers_list):
        tput = median(mine, "throughput")
        first = base.setdefault((model, protocol), tput)
        lines.append(
            f"| {model} | {protocol} | {workers} | {tput:,.0f} | {tput / first:.2f} "
            f"| {median(mine, 'p50_us') / 1000:.2f} | {median(mine, 'mean_batch'):.1f} |"
        )
    return lines


def ceilings(cells: list[dict], workers_list: list[int], cpus: int):
    """Each cell's medians and ceilings as the tables round them, for the JSON file."""
    for model, protocol, workers, mine in by_cell(cells, workers_list):
        server, owner = median(mine, "cpu_ms_per_request"), median(mine, "owner_cpu_ms_per_request")
        client = median(mine, "client_cpu_ms_per_request")
        yield {
            "model": model,
            "protocol": protocol,
            "workers": workers,
            "infer_per_s": round(median(mine, "throughput")),
            "owner_bound_ceiling": round(1000 / owner) if owner else None,
            "machine_bound_ceiling": round(cpus * 1000 / (server + client)) if client else None,
        }


def cpu_summary(cells: list[dict], workers_list: list[int], cpus: int) -> list[str]:
    lines = [
        "| model | protocol | workers | server CPU ms / request | of which the owner "
        "| owner-bound ceiling infer/s | client CPU ms / request | CPUs busy (of "
        f"{cpus}) | machine-bound ceiling infer/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, protocol, workers, mine in by_cell(cells, workers_list):
        server, owner = median(mine, "cpu_ms_per_request"), median(mine, "owner_cpu_ms_per_request")
        client = median(mine, "client_cpu_ms_per_request")
        busy = f"{median(mine, 'cpus_busy'):.2f}" if "cpus_busy" in mine[0] else "–"
        owner_text = f"{owner:.3f} | {1000 / owner:,.0f}" if owner else "– | –"
        client_text = f"{client:.3f}" if client else "–"
        ceiling = f"{cpus * 1000 / (server + client):,.0f}" if client else "–"
        lines.append(
            f"| {model} | {protocol} | {workers} | {server:.3f} | {owner_text} | {client_text} "
            f"| {busy} | {ceiling} |"
        )
    return lines


def write(args, cells: list[dict], load_before: str, load_after: str) -> None:
    info = machine()
    cpus = int(info["cpus"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = list(ceilings(cells, args.workers_list, cpus))
    (out / "workers.json").write_text(
        json.dumps({"machine": info, "cells": cells, "table": table}, indent=1)
    )
    text = [
        "# `--workers` scaling",
        "",
        f"Command: `python bench/workers.py --workers-list {','.join(map(str, args.workers_list))} "
        f"--rounds {args.rounds} --seconds {args.seconds} --concurrency {args.concurrency}`",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} CPUs (hypervisor {info['hypervisor']}), "
        f"kernel {info['kernel']}, Python {info['python']}.",
        f"Load (`uptime`) before: {load_before}; after: {load_after}.",
        "",
        "The predictor runs with no flags but `--workers N`, not pinned: it may use every core of the "
        "machine, and perf_analyzer (one client process, batch-1 requests, concurrency "
        f"{args.concurrency}, REST in binary form) runs on the same cores, so the client's own CPU "
        "is part of every figure. Worker counts are interleaved in each round; the median of "
        f"{args.rounds} rounds is shown. Mean batch: rows per engine call from kbundle_batch_size "
        "(the engine owner's batcher) over the measurement.",
        "",
        *summary(cells, args.workers_list),
        "",
        "Where the CPU goes, per request served over each perf_analyzer run (the same cells):",
        "",
        "- Server CPU: user + system time of the predictor's whole process tree (supervisor, engine "
        "owner, workers); it moves less with the machine's load than throughput does.",
        "- Of which the owner: the engine owner's own share (one process, one event loop, whatever "
        "N is), so 1000 / that is the most requests a second N workers can get through it on a "
        "machine with a core for each worker: the owner-bound ceiling.",
        "- Client CPU: perf_analyzer's own user + system time.",
        "- CPUs busy: the machine's CPU time in use (`/proc/stat`, every process) over the wall "
        "time of the run.",
        f"- Machine-bound ceiling: {cpus} CPUs x 1000 / (server + client CPU ms per request), the "
        "most requests a second this machine can serve at that cost. When CPUs busy is close to "
        "all of them, throughput sits at this ceiling, and more workers can raise it only by "
        "costing less CPU per request.",
        "",
        *cpu_summary(cells, args.workers_list, cpus),
        "",
    ]
    (out / "workers.md").write_text("\n".join(text))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--workers-list", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2]
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny", "mlp", "wide"],
        choices=list(bench_models.BUILDERS),
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5, help="perf_analyzer measurement window")
    parser.add_argument("--concurrency", type=int, default=32)
    venv = Path(os.environ.get("BENCH_VENV", ROOT / ".bench-venv"))
    parser.add_argument("--perf-analyzer", default=str(venv / "bin/perf_analyzer"))
    default_python = ROOT / ".venv/bin/python"
    parser.add_argument(
        "--python",
        default=str(default_python) if default_python.exists() else sys.executable,
        help="interpreter that runs the predictor (default: the project's .venv, else this one)",
    )
    parser.add_argument("--work", default=str(HERE / ".work"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    args.env = bench_env(Path(args.perf_analyzer).parent.parent)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    dirs = bench_models.build_all(HERE / ".models")
    load_before = uptime()
    cells = run_cells(args, dirs)
    write(args, cells, load_before, uptime())
    print((Path(args.out) / "workers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
