"""Where a gRPC predictor's CPU goes, one command: py-spy on the server under a gRPC load.

`python bench/profile_grpc.py [--model mlp|tiny] [--load saturation|overload] [--server lean|sync|aio]
[--pool lifo|fifo] [--seconds 8]` starts the predictor pinned to one core (the model's
kbundle.yaml as in bench/overload.py, no flags), drives it from `--clients` grpc.aio processes on
the other core (c=32 without deadlines, or c=256 with 100 ms deadlines), and samples the server
with `py-spy record --gil`: only the thread holding the GIL is sampled, so the tables show where
Python spends the core, not threads waiting. The header gives the load's answers/s, the server's
CPU use and the share of samples that found the GIL held (the rest of the CPU is grpc core, the
engine and the kernel, outside the GIL). Writes bench/results/profile_grpc_{model}_{load}.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import overload  # noqa: E402
from models import BUILDERS, INPUT_WIDTH  # noqa: E402
from report import summarize_profile  # noqa: E402

LOADS = {"saturation": (32, None), "overload": (256, 0.1)}  # concurrency, deadline (s)
RATE = 200  # py-spy samples per second


def py_spy_path() -> str:
    # The bench venv (bench/run.sh makes it) has py-spy; the project venv need not.
    bench_venv = Path(__file__).resolve().parent.parent / ".bench-venv" / "bin" / "py-spy"
    found = shutil.which("py-spy") or next(
        (str(p) for p in (Path(sys.executable).parent / "py-spy", bench_venv) if p.exists()), ""
    )
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def build_model(root: Path, model: str) -> tuple[Path, list]:
    """The model folder and its (request bytes, expected answer) pairs."""
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb

    path = BUILDERS[model](root / model / "model.onnx")
    (root / model / "kbundle.yaml").write_text(overload.CONFIG)
    rows = np.random.default_rng(0).standard_normal((16, INPUT_WIDTH[model])).astype(np.float32)
    want = overload.reference(path, rows)
    work = []
    for i in range(len(rows)):
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="FP32", shape=[1, INPUT_WIDTH[model]])
        request.raw_input_contents.append(rows[i : i + 1].tobytes())
        work.append((request.SerializeToString(), want[i]))
    return root / model, work


def server_env(args) -> dict[str, str]:
    return {**os.environ, "KBUNDLE_GRPC_SERVER": args.server, "KBUNDLE_GRPC_POOL": args.pool}


def start(args, model_dir: Path, log: Path):
    """The predictor serving `args.model`, pinned and ready: (process, http port, grpc port)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from procs import free_port, wait_http

    http, grpc_port = free_port(), free_port()
    cmd = ["taskset", "-c", args.server_cpu, sys.executable, "-m", "kbundle.predictors"]
    cmd += ["--model_name", args.model, "--model_dir", str(model_dir)]
    cmd += ["--http_port", str(http), "--grpc_port", str(grpc_port)]
    out = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env(args))
    wait_http(f"http://127.0.0.1:{http}/v2/models/{args.model}/ready", proc, log, 120)
    return proc, http, grpc_port


def profiled(args, pid: int, url: str, work, raw: Path) -> dict:
    """Drive the load while py-spy samples the server; the load's figures."""
    concurrency, deadline = LOADS[args.load]
    spy_cmd = [py_spy_path(), "record", "--gil", "-p", str(pid), "-d", str(int(args.seconds))]
    spy_cmd += ["-r", str(RATE), "-f", "raw", "-o", str(raw), "--nonblocking"]
    result: dict = {}

    def load() -> None:
        load = overload.Load(concurrency, args.seconds, deadline, args.backoff_ms / 1000)
        figures, _ = overload.measured(args, url, work, pid, load)
        result.update(figures)

    overload.drive(args, url, work, overload.Load(8, 1.0))  # warm
    loader = threading.Thread(target=load)
    loader.start()
    subprocess.run(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    loader.join()
    return result


def header(args, figures: dict, samples: int) -> str:
    concurrency, deadline = LOADS[args.load]
    held = 100 * samples / (RATE * args.seconds)
    return (
        f"# py-spy --gil, kbundle predictor ({args.server} gRPC server, {args.pool} pool), "
        f"{args.model}, load '{args.load}' (c={concurrency}, deadline "
        f"{deadline * 1000 if deadline else 'none'} ms, {args.clients} grpc.aio client "
        f"processes): {figures['answers_per_s']} answers/s, refused {figures['refused']}, "
        f"server CPU {figures['server_cpu_pct']} %, GIL held in {held:.0f} % of samples\n"
        f"# `python bench/profile_grpc.py --model {args.model} --load {args.load} --server "
        f"{args.server} --pool {args.pool} --seconds {args.seconds:g}`\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(BUILDERS), default="mlp")
    parser.add_argument("--load", choices=list(LOADS), default="saturation")
    parser.add_argument("--server", choices=["lean", "sync", "aio"], default="lean")
    parser.add_argument("--pool", choices=["lifo", "fifo"], default="lifo")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--backoff-ms", type=float, default=1000.0, help="as bench/overload.py")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="profile-grpc-"))
    model_dir, work = build_model(root, args.model)
    proc, _http, grpc_port = start(args, model_dir, root / "server.log")
    try:
        figures = profiled(args, proc.pid, f"127.0.0.1:{grpc_port}", work, root / "raw.txt")
    finally:
        proc.terminate()
        proc.wait(30)
    table = summarize_profile(root / "raw.txt")
    samples = int(table.split()[0])
    out = args.out or HERE / "results" / f"profile_grpc_{args.model}_{args.load}.txt"
    out.write_text(header(args, figures, samples) + table)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
