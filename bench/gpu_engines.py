"""Same model, every engine: Torch eager vs torch.export vs AOTInductor vs ONNX Runtime vs TensorRT.

    python bench/gpu_engines.py --device cuda             # on a GPU: everything present
    python bench/gpu_engines.py --device cpu --seconds 1  # runs anywhere (what CI can check)

For each engine and precision (fp32, fp16) and batch size (1, 8, 32) it measures the raw engine
(`Engine.run` in a loop, one thread) and the same engine served by the predictor process
(tritonclient HTTP, binary tensors) at concurrency 1 and 32. Results, with the device named,
go to bench/results/gpu_engines-<device>.{json,md}. Engines not present here are listed as
skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores visible"


def summarize(latencies: list[float], rows: int, wall: float) -> tuple[float, float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        len(ordered) / wall,
        len(ordered) * rows / wall,
        statistics.median(ordered) * 1e3,
        p99 * 1e3,
    )


# -- engines --------------------------------------------------------------------------------
class EagerEngine:
    """Plain nn.Module under inference_mode: the baseline every compiled form is compared to."""

    def __init__(self, model, device: str, precision: str):
        import torch

        self.torch = torch
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.model = copy.deepcopy(model).to(
            device
        )  # .to() is in place: keep the shared model fp32
        if self.dtype:
            self.model = self.model.to(self.dtype)
        self.device = device

    def run(self, inputs, output_names):
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(inputs["input"]).to(self.device)
            label, probs = self.model(x.to(self.dtype) if self.dtype else x)
            return [label.cpu().numpy(), probs.float().cpu().numpy()][: len(output_names)]


def prepare_models(work: Path, device: str, width: int, depth: int, aoti: bool) -> dict[str, Path]:
    """Export the one model to every file form into its own dir (a dir per served engine)."""
    from kbundle.predictors import torch_export
    from kbundle.samples_torch import INPUTS, OUTPUTS, digits_model

    model = digits_model(width=width, depth=depth, train_steps=20)
    dirs = {name: work / name for name in ("onnx", "torch-export", "torch-aoti")}
    for d in dirs.values():
        d.mkdir(parents=True)
    torch_export.save_onnx(model, INPUTS, OUTPUTS, dirs["onnx"] / "model.onnx", atol=1e-3)
    torch_export.save_program(model, INPUTS, OUTPUTS, dirs["torch-export"] / "model.pt2", atol=1e-3)
    if aoti:
        torch_export.save_aoti(
            model, INPUTS, OUTPUTS, dirs["torch-aoti"] / "model.pt2", device=device, atol=1e-3
        )
    else:
        shutil.rmtree(dirs.pop("torch-aoti"))
    return {"model": model, **dirs}  # type: ignore[dict-item]


def engine_matrix(dirs: dict, device: str, precisions: list[str]) -> tuple[list[tuple], list[str]]:
    """(name, precision, loader, served model dir, served flags) per runnable engine; skip reasons."""
    import onnxruntime as ort

    from kbundle.predictors.onnx_engine import OnnxEngine
    from kbundle.predictors.torch_engine import TorchEngine
    from kbundle.settings import ModelSettings

    runs, skipped = [], []
    for precision in precisions:
        settings = ModelSettings(device=device, precision=precision, warmup=False)
        runs.append(
            (
                "torch-eager",
                precision,
                lambda p=precision: EagerEngine(dirs["model"], device, p),
                None,
                [],
            )
        )
        runs.append(
            (
                "torch-export",
                precision,
                lambda s=settings: TorchEngine.load(dirs["torch-export"] / "model.pt2", s),
                dirs["torch-export"],
                ["--engine", "torch"],
            )
        )
        if "torch-aoti" in dirs and precision == "fp32":
            runs.append(
                (
                    "torch-aoti",
                    precision,
                    lambda s=settings: TorchEngine.load(dirs["torch-aoti"] / "model.pt2", s),
                    dirs["torch-aoti"],
                    ["--engine", "torch"],
                )
            )
        elif "torch-aoti" not in dirs and precision == "fp32":
            skipped.append(
                "torch-aoti: not built (pass --aoti; the C++ compile takes minutes on CPU)"
            )
        providers = ort.get_available_providers()
        if device == "cpu":
            if precision == "fp32":
                runs.append(
                    (
                        "ort-cpu",
                        precision,
                        lambda: OnnxEngine.load(
                            dirs["onnx"] / "model.onnx", ModelSettings(device="cpu")
                        ),
                        dirs["onnx"],
                        ["--engine", "onnx"],
                    )
                )
            else:
                skipped.append(f"ort-cpu {precision}: the CPU provider runs the model's own fp32")
            continue
        if "CUDAExecutionProvider" in providers and precision == "fp32":
            s = ModelSettings(device="cuda", execution_providers=("cuda",))
            runs.append(
                (
                    "ort-cuda",
                    precision,
                    lambda s=s: OnnxEngine.load(dirs["onnx"] / "model.onnx", s),
                    dirs["onnx"],
                    ["--engine", "onnx", "--execution_providers", "cuda"],
                )
            )
        if "TensorrtExecutionProvider" in providers:
            s = ModelSettings(
                device="cuda", execution_providers=("tensorrt", "cuda"), precision=precision
            )
            runs.append(
                (
                    "ort-tensorrt",
                    precision,
                    lambda s=s: OnnxEngine.load(dirs["onnx"] / "model.onnx", s),
                    dirs["onnx"],
                    ["--engine", "onnx", "--execution_providers", "tensorrt,cuda"],
                )
            )
        else:
            skipped.append(
                f"ort-tensorrt {precision}: onnxruntime has no TensorrtExecutionProvider ({providers})"
            )
        plan_dir = native_plan(dirs["onnx"], precision, skipped)
        if plan_dir is not None:
            runs.append(
                (
                    "tensorrt",
                    precision,
                    lambda d=plan_dir: load_plan(d),
                    plan_dir,
                    ["--engine", "tensorrt"],
                )
            )
    return runs, skipped


def load_plan(model_dir: Path):
    from kbundle.predictors.tensorrt_engine import TensorRTEngine
    from kbundle.settings import ModelSettings

    return TensorRTEngine.load(model_dir / "model.plan", ModelSettings(device="cuda"))


def native_plan(onnx_dir: Path, precision: str, skipped: list[str]) -> Path | None:
    from kbundle.errors import EngineLoadError
    from kbundle.predictors import engine_builder
    from kbundle.settings import ModelSettings

    try:
        target = engine_builder.detect_target()
    except EngineLoadError as exc:
        skipped.append(f"tensorrt {precision}: {exc}")
        return None
    from kbundle.predictors.tensorrt_build import build_plan

    plan_dir = onnx_dir.parent / f"tensorrt-{precision}"
    plan_dir.mkdir(exist_ok=True)
    shutil.copy(onnx_dir / "model.onnx", plan_dir / "model.onnx")
    try:  # build failures (TensorRT API, parser) are EngineLoadErrors: skip with the reason
        engine_builder.ensure_plan(
            plan_dir,
            ModelSettings(precision=precision, profile_batch=(1, 8, 32)),
            target,
            build_plan,
        )
    except EngineLoadError as exc:
        skipped.append(f"tensorrt {precision}: {exc}")
        return None
    (plan_dir / "model.onnx").unlink()  # the served dir holds the plan only
    return plan_dir


# -- measurements ---------------------------------------------------------------------------
def inputs_for(batch: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(batch).uniform(0, 16, (batch, 64)).astype(np.float32)}


def measure_raw(engine, batch: int, seconds: float) -> tuple[float, float, float, float]:
    feed = inputs_for(batch)
    names = ["label", "probabilities"]
    for _ in range(5):
        engine.run(feed, names)
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        engine.run(feed, names)
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, batch, time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_predictor(
    model_dir: Path, device: str, precision: str, flags: list[str], log: Path
) -> tuple[subprocess.Popen, str]:
    http = free_port()
    cmd = [
        sys.executable,
        "-m",
        "kbundle.predictors",
        "--model_name",
        "m",
        "--model_dir",
        str(model_dir),
        "--http_port",
        str(http),
        "--grpc_port",
        str(free_port()),
        "--device",
        device,
        "--precision",
        precision,
        *flags,
    ]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"predictor exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http}/v2/models/m/ready", timeout=2
            ) as resp:
                if resp.status == 200:
                    return proc, f"127.0.0.1:{http}"
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("predictor not ready in 600 s")


def measure_served(
    url: str, batch: int, concurrency: int, seconds: float
) -> tuple[float, float, float, float]:
    import tritonclient.http as httpclient

    x = inputs_for(batch)["input"]
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        client = httpclient.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outs = [
            httpclient.InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")
        ]
        client.infer("m", [inp], outputs=outs)  # warm the connection
        local = []
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            client.infer("m", [inp], outputs=outs)
            local.append(time.perf_counter() - t)
        with lock:
            latencies.extend(local)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(latencies, batch, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument(
        "--width", type=int, default=1024, help="MLP width (default large enough to load a GPU)"
    )
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument(
        "--aoti", action="store_true", help="also build an AOTInductor package (minutes on CPU)"
    )
    parser.add_argument("--no-served", action="store_true", help="raw engines only")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per engine (torch and the predictor's intra_op_threads); 0 = library default. "
        "On a small shared CPU, 1 avoids thread contention swamping the figures.",
    )
    parser.add_argument(
        "--out", default=None, help="results file stem (default bench/results/gpu_engines-<device>)"
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    device = device_name(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"device: {device}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kbundle-bench-") as tmp:
        work = Path(tmp)
        dirs = prepare_models(work, args.device, args.width, args.depth, args.aoti)
        runs, skipped = engine_matrix(dirs, args.device, args.precisions.split(","))
        for name, precision, loader, served_dir, flags in runs:
            engine = loader()
            for batch in batches:
                rps, rows_s, p50, p99 = measure_raw(engine, batch, args.seconds)
                rows.append(Row(name, precision, "raw", batch, 1, rps, rows_s, p50, p99))
                print(
                    f"{name:14s} {precision} raw    b={batch:<3d}        {rows_s:10.0f} rows/s  p50 {p50:7.3f} ms",
                    flush=True,
                )
            if hasattr(engine, "close"):
                engine.close()
            if served_dir is None or args.no_served:
                continue
            threads = ["--intra_op_threads", str(args.threads)] if args.threads else []
            proc, url = start_predictor(
                served_dir,
                args.device,
                precision,
                flags + threads,
                work / f"{name}-{precision}.log",
            )
            try:
                for batch in batches:
                    for conc in concurrencies:
                        rps, rows_s, p50, p99 = measure_served(url, batch, conc, args.seconds)
                        rows.append(
                            Row(name, precision, "served", batch, conc, rps, rows_s, p50, p99)
                        )
                        print(
                            f"{name:14s} {precision} served b={batch:<3d} c={conc:<3d}  {rows_s:10.0f} rows/s  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms",
                            flush=True,
                        )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    write_results(args, device, rows, skipped)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
