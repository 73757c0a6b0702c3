"""The benchmark: raw engine limit, stock KServe, kbundle (batching on/off), under perf_analyzer.

Run through `bash bench/run.sh` (it makes the bench venv and sets the library path). Servers run
with the project's .venv python pinned to one core (`taskset -c SERVER_CPU`); perf_analyzer runs
pinned to the other. Each cell (server x model x protocol x concurrency) is repeated; results go to
bench/results/ as Markdown, CSV and a PNG plot.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402

SERVERS = {
    # name -> (command builder, description)
    "stock-kserve": "plain kserve.Model + ORT per request (KServe custom-model sample)",
    "kbundle-nobatch": "kbundle predictor, --max_batch_size 0",
    "kbundle": "kbundle predictor, dynamic batching on (default settings)",
}


@dataclass
class Cell:
    server: str
    model: str
    protocol: str
    concurrency: int
    throughput: list[float] = field(default_factory=list)
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    mean_batch: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_times() -> dict[str, int]:
    fields = open("/proc/stat").readline().split()[1:]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return dict(zip(names, map(int, fields[: len(names)]), strict=False))


def machine() -> dict[str, str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    return {
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "cpu": info.get("Model name", platform.processor()),
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "hypervisor": info.get("Hypervisor vendor", "none"),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# -- (a) raw engine limit --------------------------------------------------------------------
RAW_SNIPPET = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, width, batches, seconds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
out = {}
for b in batches:
    x = np.random.default_rng(0).standard_normal((b, width)).astype(np.float32)
    for _ in range(20): s.run(None, {"input": x})
    runs = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            s.run(None, {"input": x}); n += 1
        runs.append(n * b / (time.perf_counter() - t0))
    out[b] = runs
print(json.dumps(out))
"""


def raw_limit(
    model_dir: Path, width: int, batches: list[int], cpu: str, seconds: float
) -> dict[int, list[float]]:
    cmd = [
        "taskset",
        "-c",
        cpu,
        str(ROOT / ".venv/bin/python"),
        "-c",
        RAW_SNIPPET,
        str(model_dir / "model.onnx"),
        str(width),
        json.dumps(batches),
        str(seconds),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


# -- servers ---------------------------------------------------------------------------------
def server_command(server: str, model: str, model_dir: Path, http: int, grpc: int) -> list[str]:
    python = str(ROOT / ".venv/bin/python")
    common = ["--model_name", model, "--http_port", str(http), "--grpc_port", str(grpc)]
    if server == "stock-kserve":
        return [
            python,
            str(HERE / "stock_kserve.py"),
            "--model_dir",
            str(model_dir),
            *common,
            "--intra_op_threads",
            "1",
        ]
    extra = ["--max_batch_size", "0"] if server == "kbundle-nobatch" else []
    return [
        python,
        "-m",
        "kbundle.predictors",
        "--model_dir",
        str(model_dir),
        *common,
        "--intra_op_threads",
        "1",
        *extra,
    ]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def batch_stats(http: int, model: str) -> tuple[float, float]:
    """(sum, count) of kbundle_batch_size for the model, (0, 0) where absent."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0, 0.0
    found = {}
    for kind in ("sum", "count"):
        m = re.search(rf'^kbundle_batch_size_{kind}{{model="{model}"}} (\S+)$', text, re.M)
        found[kind] = float(m.group(1)) if m else 0.0
    return found["sum"], found["count"]


def perf_analyzer(
    args, model: str, port: int, protocol: str, concurrency: int, shape: str
) -> dict | None:
    """One perf_analyzer measurement; None when it found no stable window twice (noisy host)."""
    out = Path(args.work) / "pa.csv"
    cmd = [
        "taskset", "-c", args.client_cpu, args.perf_analyzer, "-m", model,
        "-u", f"127.0.0.1:{port}", "-i", protocol, "-b", "1",
        "--concurrency-range", str(concurrency), "--shape", shape,
        "-p", str(args.window_ms), "--max-trials", "4", "-s", "1000", "-f", str(out),
    ]  # fmt: skip
    if protocol == "http":
        cmd += ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]
    for _attempt in range(2):
        out.unlink(missing_ok=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode == 0 and out.exists():
            row = next(csv.DictReader(io.StringIO(out.read_text())))
            return {
                "throughput": float(row["Inferences/Second"]),
                "p50_us": float(row["p50 latency"]),
                "p99_us": float(row["p99 latency"]),
            }
        if "stable" not in result.stdout:
            raise RuntimeError(
                f"perf_analyzer failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
    print(f"  no stable measurement: {protocol} c={concurrency} (run skipped)", flush=True)
    return None


def model_shape(port: int, model: str, width: int) -> str:
    config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/config"))
    return f"input:{width}" if config.get("max_batch_size", 0) > 0 else f"input:1,{width}"


def run_server_cells(args, server: str, model: str, model_dir: Path, cells: list[Cell]) -> None:
    http, grpc = free_port(), free_port()
    log = open(Path(args.work) / f"{server}-{model}.log", "wb")
    cmd = ["taskset", "-c", args.server_cpu, *server_command(server, model, model_dir, http, grpc)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready", proc)
        shape = model_shape(http, model, bench_models.INPUT_WIDTH[model])
        for protocol in args.protocols:
            port = http if protocol == "http" else grpc
            for concurrency in args.concurrency:
                cell = Cell(server, model, protocol, concurrency)
                for _ in range(args.repeats):
                    before = batch_stats(http, model)
                    result = perf_analyzer(args, model, port, protocol, concurrency, shape)
                    after = batch_stats(http, model)
                    if result is None:
                        continue
                    cell.throughput.append(result["throughput"])
                    cell.p50_us.append(result["p50_us"])
                    cell.p99_us.append(result["p99_us"])
                    if after[1] > before[1]:
                        cell.mean_batch.append((after[0] - before[0]) / (after[1] - before[1]))
                print(
                    f"{server:16} {model:5} {protocol:5} c={concurrency:<3} "
                    f"{statistics.median(cell.throughput):8.0f} infer/s "
                    f"p50 {statistics.median(cell.p50_us):7.0f} us p99 {statistics.median(cell.p99_us):7.0f} us "
                    f"runs {[round(t) for t in cell.throughput]}",
                    flush=True,
                )
                cells.append(cell)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- where the time goes: py-spy on the kbundle server under load ---------------------------
def portable_arg(arg: str) -> str:
    """A command-line argument as the results file shows it: no absolute path of this machine
    (inside the repository relative to it, elsewhere only the file name)."""
    if not arg.startswith("/"):
        return arg
    path = Path(arg)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else f".../{path.name}"


def summarize_profile(raw_path: Path, top: int = 25) -> str:
    """Own-time and cumulative-time tables from a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples", "", "own time (where the CPU is):"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(samples, 1):5.1f}%  {frame[:140]}")
    lines += ["", "cumulative time:"]
    for frame, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(samples, 1):5.1f}%  {frame[:140]}")
    return "\n".join(lines) + "\n"


def profile_server(args, model: str, model_dir: Path) -> None:
    """py-spy the kbundle server (batching on) at concurrency 32 on each protocol."""
    py_spy = shutil.which("py-spy") or str(Path(args.perf_analyzer).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: no profile", flush=True)
        return
    http, grpc = free_port(), free_port()
    log = open(Path(args.work) / f"profile-{model}.log", "wb")
    cmd = [
        "taskset",
        "-c",
        args.server_cpu,
        *server_command("kbundle", model, model_dir, http, grpc),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready", proc)
        shape = model_shape(http, model, bench_models.INPUT_WIDTH[model])
        for protocol in args.protocols:
            port = http if protocol == "http" else grpc
            pa_args = argparse.Namespace(**{**vars(args), "window_ms": 2500})
            raw = Path(args.work) / f"profile-{model}-{protocol}.txt"
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(proc.pid),
                    "-d",
                    "5",
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = perf_analyzer(pa_args, model, port, protocol, 32, shape)
            spy.wait(timeout=60)
            if raw.exists() and result is not None:
                header = (
                    f"# py-spy, kbundle server (batching on), {model} over {protocol}, "
                    f"perf_analyzer concurrency 32: {result['throughput']:.0f} infer/s\n"
                )
                out = Path(args.out) / f"profile_{model}_{protocol}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(header + summarize_profile(raw))
                print(f"profile written: {out}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- reporting -------------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}" if values else ""


def write_results(
    args, cells: list[Cell], raw: dict, info: dict, steal_pct: float, elapsed: float
) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = {m: max(statistics.median(v) for v in raw[m].values()) for m in raw}
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "model",
                "protocol",
                "server",
                "concurrency",
                "throughput_median",
                "throughput_min",
                "throughput_max",
                "p50_us_median",
                "p99_us_median",
                "p99_us_max",
                "mean_batch",
                "ratio_to_raw_limit",
                "repeats",
            ]
        )
        for c in cells:
            tput = statistics.median(c.throughput)
            w.writerow(
                [
                    c.model,
                    c.protocol,
                    c.server,
                    c.concurrency,
                    round(tput, 1),
                    round(min(c.throughput), 1),
                    round(max(c.throughput), 1),
                    round(statistics.median(c.p50_us)),
                    round(statistics.median(c.p99_us)),
                    round(max(c.p99_us)),
                    round(statistics.mean(c.mean_batch), 2) if c.mean_batch else "",
                    round(tput / limit[c.model], 5),
                    len(c.throughput),
                ]
            )
    with open(out / "raw_engine.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "batch", "rows_per_s_median", "rows_per_s_min", "rows_per_s_max"])
        for m, by_batch in raw.items():
            for b, runs in by_batch.items():
                w.writerow(
                    [m, b, round(statistics.median(runs)), round(min(runs)), round(max(runs))]
                )
    lines = [
        "# kbundle benchmark results",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} vCPUs ({info['hypervisor']} guest), kernel {info['kernel']}, "
        f"Python {info['python']}. CPU steal during the run: {steal_pct:.1f}% of all CPU time; load average "
        f"at the end {' / '.join(info['loadavg'])} (1/5/15 min) on {info['cpus']} CPUs: other jobs shared both "
        "cores, so the pinned server did not have its core to itself. "
        f"Server pinned to CPU {args.server_cpu}, perf_analyzer to CPU {args.client_cpu}; ONNX Runtime "
        f"with 1 intra-op thread everywhere. Run took {elapsed / 60:.1f} min; "
        f"each cell repeated {args.repeats}× (perf_analyzer -p {args.window_ms}, batch-1 requests, binary "
        "tensors over HTTP). Shared, noisy machine: read the spread (min–max) next to each median.",
        "",
        "Command: `bash bench/run.sh` " + " ".join(map(portable_arg, sys.argv[1:])),
        "",
        "## (a) Raw engine limit: onnxruntime `session.run` in a loop, same core",
        "",
        "| model | batch | rows/s (median) | spread |",
        "|---|---:|---:|---|",
    ]
    for m, by_batch in raw.items():
        for b, runs in by_batch.items():
            lines.append(f"| {m} | {b} | {statistics.median(runs):.0f} | {spread(runs)} |")
    lines += [
        "",
        "## (b) stock KServe vs (c) kbundle, under perf_analyzer",
        "",
        "Ratio = median throughput / raw engine limit (best rows/s over the batch sizes above). "
        "Mean batch = rows per engine call the batcher formed (from kbundle_batch_size).",
        "",
        "| model | protocol | server | conc. | infer/s (median) | spread | p50 ms | p99 ms | mean batch | of raw limit |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        tput = statistics.median(c.throughput)
        batch = f"{statistics.mean(c.mean_batch):.1f}" if c.mean_batch else "–"
        lines.append(
            f"| {c.model} | {c.protocol} | {c.server} | {c.concurrency} | {tput:.0f} | {spread(c.throughput)} | "
            f"{statistics.median(c.p50_us) / 1000:.2f} | {statistics.median(c.p99_us) / 1000:.2f} | {batch} | "
            f"{100 * tput / limit[c.model]:.2g}% |"
        )
    lines += ["", "Servers: " + "; ".join(f"**{k}**: {v}" for k, v in SERVERS.items()), ""]
    (out / "results.md").write_text("\n".join(lines))
    plot(out / "results.csv", out / "raw_engine.csv", out / "results.png", info)


def plot(csv_path: Path, raw_csv: Path, path: Path, info: dict) -> None:
    """Throughput vs concurrency per (model, protocol), min–max error bars, from results.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    limit: dict[str, float] = {}
    for r in csv.DictReader(open(raw_csv)):
        limit[r["model"]] = max(limit.get(r["model"], 0.0), float(r["rows_per_s_median"]))
    panels = sorted({(r["model"], r["protocol"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (model, protocol) in zip(axes[0], panels, strict=True):
        top = 0.0
        for server in SERVERS:
            cells = sorted(
                (
                    r
                    for r in rows
                    if (r["model"], r["protocol"], r["server"]) == (model, protocol, server)
                ),
                key=lambda r: int(r["concurrency"]),
            )
            if not cells:
                continue
            xs = [int(r["concurrency"]) for r in cells]
            med = [float(r["throughput_median"]) for r in cells]
            lo = [m - float(r["throughput_min"]) for m, r in zip(med, cells, strict=True)]
            hi = [float(r["throughput_max"]) - m for m, r in zip(med, cells, strict=True)]
            top = max(top, *(float(r["throughput_max"]) for r in cells))
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=server)
        raw = limit.get(model, 0.0)
        if raw and raw < 3 * top:
            ax.axhline(raw, color="grey", linestyle="--", label="raw engine limit")
        elif raw:  # far off the chart (tiny model): say it rather than squash the lines
            ax.text(
                0.02,
                0.96,
                f"raw engine limit {raw:,.0f} rows/s (off scale)",
                transform=ax.transAxes,
                fontsize=7,
                va="top",
            )
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model} / {protocol}")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("infer/s (batch-1 requests)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"{info['cpu']} ({info['cpus']} vCPUs, shared): server on 1 core, perf_analyzer on the other",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "tiny"], choices=list(bench_models.BUILDERS)
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument(
        "--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=1000)
    parser.add_argument("--raw-batches", nargs="+", type=int, default=[1, 4, 8, 16, 32])
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--perf-analyzer", default=shutil.which("perf_analyzer") or "perf_analyzer")
    parser.add_argument("--work", default=str(HERE / ".work"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--profile-only", action="store_true", help="only the py-spy profiles")
    parser.add_argument("--replot", action="store_true", help="redraw results.png from the CSVs")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.replot:
        out = Path(args.out)
        plot(out / "results.csv", out / "raw_engine.csv", out / "results.png", machine())
        return 0
    started, steal_before = time.monotonic(), cpu_times()
    dirs = bench_models.build_all(HERE / ".models")
    if args.profile_only:
        for model in args.models:
            profile_server(args, model, dirs[model])
        return 0
    raw = {}
    for model in args.models:
        raw[model] = raw_limit(
            dirs[model], bench_models.INPUT_WIDTH[model], args.raw_batches, args.server_cpu, 1.0
        )
        print(
            f"raw {model}: "
            + ", ".join(f"b{b} {statistics.median(v):.0f} rows/s" for b, v in raw[model].items()),
            flush=True,
        )
    cells: list[Cell] = []
    for model in args.models:
        for server in args.servers:
            run_server_cells(args, server, model, dirs[model], cells)
    if not args.no_profile:
        for model in args.models:
            profile_server(args, model, dirs[model])
    steal_after = cpu_times()
    total = sum(steal_after.values()) - sum(steal_before.values())
    steal = 100.0 * (steal_after["steal"] - steal_before["steal"]) / max(total, 1)
    write_results(args, cells, raw, machine(), steal, time.monotonic() - started)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
