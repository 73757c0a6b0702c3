"""The benchmark: raw engine limit, stock KServe, kbundle (batching on/off), under perf_analyzer.

Run through `bash bench/run.sh` (it makes the bench venv and sets the library path). Servers run
with the project's .venv python pinned to one core (`taskset -c SERVER_CPU`); perf_analyzer runs
pinned to the other. Each cell (server x model x protocol x concurrency) is repeated; results go to
bench/results/ as Markdown, CSV and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
from report import SERVERS, Cell, plot, summarize_profile, write_results  # noqa: E402


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
def server_command(
    server: str, model: str, model_dir: Path, http: int, grpc: int, flags: tuple[str, ...] = ()
) -> list[str]:
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
        *extra,  # no tuning flags: the defaults a manifest without tuning gets (issue 11)
        *flags,  # an A/B's variant (bench/engine_on_loop.py)
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


@contextlib.contextmanager
def pinned_server(
    args,
    server: str,
    model: str,
    model_dir: Path,
    log_name: str,
    flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
):
    """A server pinned to `args.server_cpu`, ready: yields (process, http port, grpc port, the
    perf_analyzer shape); stopped (terminate, then kill after 20 s) on the way out. `env`: its
    environment (default: this process's)."""
    http, grpc = free_port(), free_port()
    log = open(Path(args.work) / log_name, "wb")
    command = server_command(server, model, model_dir, http, grpc, flags)
    cmd = ["taskset", "-c", args.server_cpu, *command]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready", proc)
        yield proc, http, grpc, model_shape(http, model, bench_models.INPUT_WIDTH[model])
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_server_cells(args, server: str, model: str, model_dir: Path, cells: list[Cell]) -> None:
    with pinned_server(args, server, model, model_dir, f"{server}-{model}.log") as ready:
        _, http, grpc, shape = ready
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


# -- where the time goes: py-spy on the kbundle server under load ---------------------------
def profile_server(args, model: str, model_dir: Path) -> None:
    """py-spy the kbundle server (batching on) at concurrency 32 on each protocol."""
    py_spy = shutil.which("py-spy") or str(Path(args.perf_analyzer).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: no profile", flush=True)
        return
    with pinned_server(args, "kbundle", model, model_dir, f"profile-{model}.log") as ready:
        proc, http, grpc, shape = ready
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
