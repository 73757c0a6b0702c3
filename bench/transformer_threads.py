"""Where the transformer's CPU goes: its event-loop thread vs its decode/resize executor threads.

    python bench/transformer_threads.py [--seconds 20] [--concurrency 8] [--side 256]

The reason the transformer keeps one process under `--workers` (docs/workers.md) is measured here.
The digits predictor and the sample digits transformer (8x8 grayscale, `resample: box`) run as real
processes; gRPC clients (tritonclient, `--concurrency` threads) send batches of 8 grayscale PNGs of
`--side` x `--side` pixels, so each image is decoded and resized. Per transformer thread: user +
system CPU from /proc over the timed loop. `--workers` would add processes for what the event-loop
thread does; the executor threads already run in parallel (Pillow releases the GIL while it decodes
and resizes). Writes bench/results/transformer_threads.md.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tritonclient.grpc as grpcclient  # noqa: E402
from procs import start_predictor, start_transformer  # noqa: E402

from kbundle import samples  # noqa: E402

BATCH = 8
# OS thread names: Python's own threads keep the process name (the loop's executor, which runs
# decode and resize); grpcio's are "event_engine".
THREAD_KINDS = {"python": "Python threads (the executor: decode, resize)", "event_engine": "grpcio"}


def pngs(side: int, count: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = np.empty(count, dtype=object)
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8), "L").save(buf, "PNG")
        out[i] = buf.getvalue()
    return out


def thread_cpu(pid: int) -> Counter:
    """CPU seconds per thread kind: the main (event-loop) thread, else the thread's name."""
    ticks: Counter = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = THREAD_KINDS.get(name.rstrip("0123456789_-"), name)
        kind = "event loop (main thread)" if task.name == str(pid) else kind
        ticks[kind] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ticks


def load(url: str, images: np.ndarray, stop: threading.Event, done: list[int]) -> None:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(images)
    while not stop.is_set():
        client.infer("digits", [tensor])
        done.append(1)


def measure(args, transformer) -> tuple[Counter, float, int]:
    images = pngs(args.side, BATCH)
    stop, done = threading.Event(), []
    threads = [
        threading.Thread(target=load, args=(transformer.grpc_url, images, stop, done))
        for _ in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(2)  # warm
    before, started, count = thread_cpu(transformer.proc.pid), time.monotonic(), len(done)
    time.sleep(args.seconds)
    after, wall, count = (
        thread_cpu(transformer.proc.pid),
        time.monotonic() - started,
        len(done) - count,
    )
    stop.set()
    for thread in threads:
        thread.join()
    return after - before, wall, count


def write(args, cpu: Counter, wall: float, calls: int, load: tuple[str, str]) -> str:
    total = sum(cpu.values())
    rows = [
        f"| {kind} | {seconds / wall:.2f} | {100 * seconds / total:.0f} % |"
        for kind, seconds in cpu.most_common()
    ]
    text = "\n".join(
        [
            "# Transformer CPU by thread",
            "",
            f"Command: `python bench/transformer_threads.py --seconds {args.seconds} "
            f"--concurrency {args.concurrency} --side {args.side}`",
            "",
            f"{os.cpu_count()} CPUs; `uptime` before: {load[0]}; after: {load[1]}. Client, "
            "transformer and predictor share the machine.",
            "",
            f"{calls} gRPC calls of {BATCH} PNGs ({args.side}x{args.side} grayscale, resized to "
            f"8x8) in {wall:.1f} s: {calls * BATCH / wall:.0f} images/s; transformer CPU "
            f"{total / wall:.2f} cores.",
            "",
            "| thread | cores (CPU s / wall s) | share of the transformer's CPU |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    )
    (ROOT / "bench" / "results" / "transformer_threads.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    models, work = samples.build_all(), ROOT / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    predictor = start_predictor(
        "digits", models / "digits" / "v1", work / "tt-predictor.log", env={"KBUNDLE_WORKERS": "1"}
    )
    spec = models / "digits-transformer" / "v1"
    try:
        transformer = start_transformer(
            "digits", spec, predictor.grpc_url, "grpc-v2", work / "tt-transformer.log"
        )
        try:
            before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            cpu, wall, calls = measure(args, transformer)
            after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            print(write(args, cpu, wall, calls, (before, after)))
        finally:
            transformer.stop()
    finally:
        predictor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
